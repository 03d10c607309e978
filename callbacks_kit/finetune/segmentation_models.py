"""Segmentation models by name, for a number of classes, and their logits as a plain tensor.

`unet` is the package's own small U-Net (`finetune/unet.py`), the default: it learns from
scratch on a CPU. `torchvision.models.segmentation` builds FCN, DeepLabV3 and LR-ASPP models
that return `{"out": logits}` (and `"aux"` with an auxiliary head). They are built here
without any download (no backbone weights unless named), without the auxiliary head, for
`num_classes` outputs; named weights (`DEFAULT`, `COCO_WITH_VOC_LABELS_V1`) come from the local
torch hub cache, with the classifier's last layers, shaped for their 21 classes, left out.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable

import torch
import torchvision
from torch import nn

from callbacks_kit.choices import DEFAULT_SEGMENTATION_MODEL as DEFAULT_SEGMENTATION_MODEL
from callbacks_kit.errors import FinetuneError
from callbacks_kit.finetune.hub import cached_weights, is_weight_name
from callbacks_kit.finetune.unet import UNET, UNet
from callbacks_kit.finetune.weights import load_weights

SEGMENTATION_MODELS = (UNET, *torchvision.models.list_models(module=torchvision.models.segmentation))

SEGMENTATION_HEAD = "classifier"  # where every torchvision segmentation model keeps its head


def is_segmentation_model(model: nn.Module) -> bool:
    """Whether `model` is one of the segmentation models built here (the U-Net, FCN, DeepLabV3, LR-ASPP)."""
    segmentation = torchvision.models.segmentation
    return isinstance(model, (UNet, segmentation.FCN, segmentation.DeepLabV3, segmentation.LRASPP))


def check_segmentation_model_name(name: str) -> None:
    """Refuse a name that is not `unet` or one of `torchvision.models.segmentation`'s, with the closest ones."""
    if name not in SEGMENTATION_MODELS:
        close = difflib.get_close_matches(name, SEGMENTATION_MODELS, n=3, cutoff=0.4)
        raise FinetuneError(
            f"--model {name} is not a segmentation model; choose one of {', '.join(SEGMENTATION_MODELS)}"
            + (f" (closest: {', '.join(close)})" if close else "")
        )


def build_segmentation_model(
    name: str,
    num_classes: int,
    weights: str | os.PathLike[str] | None = None,
    allow_partial: bool = False,
    report: Callable[[str], None] | None = None,
) -> nn.Module:
    """A segmentation model by name, with `num_classes` outputs and no auxiliary head.

    Args:
        name: One of `SEGMENTATION_MODELS`: `unet` (the package's U-Net, from scratch) or
            `torchvision.models.list_models(module=torchvision.models.segmentation)`.
        num_classes: Output channels (classes, background included).
        weights: A local weights file of the same architecture, or the name of torchvision
            weights (`DEFAULT`, `COCO_WITH_VOC_LABELS_V1`) read from the torch hub cache
            (offline). The classifier's last layers are kept only when their class count
            matches; an auxiliary head in the file is not used.
        allow_partial: Load the matching part of weights that only partly fit (see `load_weights`).
        report: Called with one line saying what the weights load matched.
    """
    check_segmentation_model_name(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise FinetuneError(f"num_classes must be a positive int, got {num_classes!r}")
    model: nn.Module
    if name == UNET:
        model = UNet(num_classes)
    else:
        built = torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=num_classes)
        if getattr(built, "aux_classifier", None) is not None:
            built.aux_classifier = None
        model = built
    if weights is None:
        return model
    path = cached_weights(name, str(weights)) if is_weight_name(str(weights)) else weights
    loaded = load_weights(model, path, allow_partial=allow_partial)
    if report is not None:
        report(f"weights {weights}{f' ({path})' if path != weights else ''}: {loaded}")
    return model


class SegmentationLogits(nn.Module):
    """A segmentation model whose output is the logits tensor `(N, C, H, W)`, not `{"out": ...}` (for export)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The logits of `images` (the `"out"` entry of a dict output)."""
        outputs = self.model(images)
        return outputs["out"] if isinstance(outputs, dict) else outputs
