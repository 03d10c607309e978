"""Fine-tuning helpers: freezing, param groups by module name, torchvision heads, models and local weights.

Classifiers (`build_classifier`), segmentation models (`build_segmentation_model`: the package's
`UNet` or torchvision's).

`callbacks_kit.finetune.<name>` keeps working for every name below, wherever it lives.
"""

from callbacks_kit.errors import FinetuneError
from callbacks_kit.finetune.freezing import freeze, unfreeze
from callbacks_kit.finetune.heads import HEADS, SUPPORTED_FAMILIES, MLPHead, backbone_blocks, head_name, replace_head
from callbacks_kit.finetune.hub import cached_weights, weights_input_size
from callbacks_kit.finetune.models import build_classifier, idx_to_class
from callbacks_kit.finetune.param_groups import param_groups, select_parameters
from callbacks_kit.finetune.segmentation_models import (
    DEFAULT_SEGMENTATION_MODEL,
    SEGMENTATION_MODELS,
    SegmentationLogits,
    build_segmentation_model,
    is_segmentation_model,
)
from callbacks_kit.finetune.unet import UNet
from callbacks_kit.finetune.weights import LoadReport, load_state, load_weights, read_state_dict

__all__ = [
    "DEFAULT_SEGMENTATION_MODEL",
    "HEADS",
    "MLPHead",
    "SEGMENTATION_MODELS",
    "SUPPORTED_FAMILIES",
    "SegmentationLogits",
    "UNet",
    "FinetuneError",
    "LoadReport",
    "backbone_blocks",
    "build_classifier",
    "build_segmentation_model",
    "cached_weights",
    "freeze",
    "head_name",
    "idx_to_class",
    "is_segmentation_model",
    "load_state",
    "load_weights",
    "param_groups",
    "read_state_dict",
    "replace_head",
    "select_parameters",
    "unfreeze",
    "weights_input_size",
]
