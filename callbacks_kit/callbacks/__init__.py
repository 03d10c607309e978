"""Built-in callbacks, one per module named for its class.

Every public name is here, imported from its module on first use (`callbacks_kit.exports`):
the trainer imports `callbacks.base`, which runs this file first, and must not import every
callback (a layer above it) with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from callbacks_kit.errors import NonFiniteError, ScheduleError
from callbacks_kit.exports import lazy_exports

if TYPE_CHECKING:
    from callbacks_kit.callbacks.base import EVENTS, Callback, CallbackList, Order
    from callbacks_kit.callbacks.batch_grid import BatchGrid
    from callbacks_kit.callbacks.batch_norm_stats import BatchNormRecalibration
    from callbacks_kit.callbacks.class_report import ClassReport
    from callbacks_kit.callbacks.confusion_matrix import ConfusionMatrix
    from callbacks_kit.callbacks.early_stopping import EarlyStopping
    from callbacks_kit.callbacks.ema import EMA
    from callbacks_kit.callbacks.embeddings import Embeddings
    from callbacks_kit.callbacks.feature_maps import FeatureMaps
    from callbacks_kit.callbacks.freeze_unfreeze import FreezeUnfreeze
    from callbacks_kit.callbacks.grad_cam import GradCAM
    from callbacks_kit.callbacks.kernel_grid import KernelGrid
    from callbacks_kit.callbacks.layer_stats import LayerStats
    from callbacks_kit.callbacks.lr_scheduler import LearningRateScheduler
    from callbacks_kit.callbacks.lr_scheduler import LRScheduler as LRScheduler  # deprecated name, not in __all__
    from callbacks_kit.callbacks.mix import MixUpCutMix
    from callbacks_kit.callbacks.model_checkpoint import ModelCheckpoint
    from callbacks_kit.callbacks.pixel_confusion_matrix import PixelConfusionMatrix
    from callbacks_kit.callbacks.preemption_handler import PreemptionHandler
    from callbacks_kit.callbacks.profiler import Profiler
    from callbacks_kit.callbacks.progress_bar import ProgressBar
    from callbacks_kit.callbacks.segmentation_overlays import SegmentationOverlays
    from callbacks_kit.callbacks.segmentation_report import SegmentationReport
    from callbacks_kit.callbacks.segmentation_view import SegmentationView
    from callbacks_kit.callbacks.tensorboard_logger import TensorBoardLogger
    from callbacks_kit.callbacks.terminate_on_nan import TerminateOnNaN
    from callbacks_kit.callbacks.top_losses import TopLosses
    from callbacks_kit.callbacks.weight_histograms import WeightHistograms
    from callbacks_kit.callbacks.worst_segmentations import WorstSegmentations

# Public name -> the module of this package that defines it.
_HOMES: dict[str, str] = {
    "EVENTS": "base",
    "Callback": "base",
    "CallbackList": "base",
    "Order": "base",
    "BatchGrid": "batch_grid",
    "BatchNormRecalibration": "batch_norm_stats",
    "ClassReport": "class_report",
    "ConfusionMatrix": "confusion_matrix",
    "EarlyStopping": "early_stopping",
    "EMA": "ema",
    "Embeddings": "embeddings",
    "FeatureMaps": "feature_maps",
    "FreezeUnfreeze": "freeze_unfreeze",
    "GradCAM": "grad_cam",
    "KernelGrid": "kernel_grid",
    "LayerStats": "layer_stats",
    "LearningRateScheduler": "lr_scheduler",
    "LRScheduler": "lr_scheduler",
    "MixUpCutMix": "mix",
    "ModelCheckpoint": "model_checkpoint",
    "PixelConfusionMatrix": "pixel_confusion_matrix",
    "PreemptionHandler": "preemption_handler",
    "Profiler": "profiler",
    "ProgressBar": "progress_bar",
    "SegmentationOverlays": "segmentation_overlays",
    "SegmentationReport": "segmentation_report",
    "SegmentationView": "segmentation_view",
    "TensorBoardLogger": "tensorboard_logger",
    "TerminateOnNaN": "terminate_on_nan",
    "TopLosses": "top_losses",
    "WeightHistograms": "weight_histograms",
    "WorstSegmentations": "worst_segmentations",
}

__all__ = [
    "EVENTS",
    "BatchGrid",
    "BatchNormRecalibration",
    "Callback",
    "CallbackList",
    "ClassReport",
    "ConfusionMatrix",
    "EMA",
    "EarlyStopping",
    "Embeddings",
    "FeatureMaps",
    "FreezeUnfreeze",
    "GradCAM",
    "KernelGrid",
    "LayerStats",
    "LearningRateScheduler",
    "MixUpCutMix",
    "ModelCheckpoint",
    "NonFiniteError",
    "Order",
    "PixelConfusionMatrix",
    "PreemptionHandler",
    "Profiler",
    "ProgressBar",
    "ScheduleError",
    "SegmentationOverlays",
    "SegmentationReport",
    "SegmentationView",
    "TensorBoardLogger",
    "TerminateOnNaN",
    "TopLosses",
    "WeightHistograms",
    "WorstSegmentations",
]

__getattr__, __dir__ = lazy_exports(__name__, _HOMES, __all__)
