"""callbacks_kit: a minimal event-driven trainer on Accelerate, with callbacks for
LR scheduling, fine-tuning, checkpointing and TensorBoard inspection.

Every public name is imported on first use (PEP 562), so `import callbacks_kit` and the
`callbacks-kit` command line load neither torch nor Accelerate until something needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from callbacks_kit.exports import lazy_exports

if TYPE_CHECKING:
    from callbacks_kit.callbacks import (
        EMA,
        BatchGrid,
        BatchNormRecalibration,
        Callback,
        ClassReport,
        ConfusionMatrix,
        EarlyStopping,
        Embeddings,
        FeatureMaps,
        FreezeUnfreeze,
        GradCAM,
        KernelGrid,
        LayerStats,
        LearningRateScheduler,
        MixUpCutMix,
        ModelCheckpoint,
        Order,
        PixelConfusionMatrix,
        PreemptionHandler,
        Profiler,
        ProgressBar,
        SegmentationOverlays,
        SegmentationReport,
        TensorBoardLogger,
        TerminateOnNaN,
        TopLosses,
        WeightHistograms,
        WorstSegmentations,
    )
    from callbacks_kit.callbacks import LRScheduler as LRScheduler  # deprecated name, not in __all__
    from callbacks_kit.data.csv_labels import CsvImageDataset
    from callbacks_kit.deploy import (
        RunInfo,
        evaluate_run,
        evaluate_segmentation,
        export_run,
        load_run_model,
        predict,
        predict_masks,
    )
    from callbacks_kit.errors import CallbacksKitError, CheckpointError, LayerNotFoundError, TrainerError
    from callbacks_kit.finetune.heads import MLPHead
    from callbacks_kit.hooks import ActivationCapture
    from callbacks_kit.layers import resolve_module
    from callbacks_kit.losses import SegmentationLoss
    from callbacks_kit.lr_finder import LRFinder, LRFinderResult
    from callbacks_kit.metrics import accuracy
    from callbacks_kit.segmentation_metrics import SegmentationMetrics
    from callbacks_kit.state import TrainState
    from callbacks_kit.trainer import Trainer

# Public name -> the module that defines it (LRScheduler: the deprecated name, not in __all__).
_HOMES: dict[str, str] = {
    **dict.fromkeys(
        ["EMA", "BatchGrid", "BatchNormRecalibration", "Callback", "ClassReport", "ConfusionMatrix", "EarlyStopping",
         "Embeddings", "FeatureMaps", "FreezeUnfreeze", "GradCAM", "KernelGrid", "LayerStats", "LearningRateScheduler",
         "LRScheduler", "MixUpCutMix", "ModelCheckpoint", "Order", "PixelConfusionMatrix",
         "PreemptionHandler", "Profiler", "ProgressBar", "SegmentationOverlays", "SegmentationReport",
         "TensorBoardLogger", "TerminateOnNaN", "TopLosses", "WeightHistograms", "WorstSegmentations"],
        "callbacks",
    ),
    "CsvImageDataset": "data.csv_labels",
    **dict.fromkeys(["RunInfo", "evaluate_run", "evaluate_segmentation", "export_run", "load_run_model", "predict",
                      "predict_masks"], "deploy"),
    **dict.fromkeys(["CallbacksKitError", "CheckpointError", "LayerNotFoundError", "TrainerError"], "errors"),
    "MLPHead": "finetune.heads",
    "ActivationCapture": "hooks",
    "resolve_module": "layers",
    "SegmentationLoss": "losses",
    "SegmentationMetrics": "segmentation_metrics",
    "LRFinder": "lr_finder",
    "LRFinderResult": "lr_finder",
    "accuracy": "metrics",
    "TrainState": "state",
    "Trainer": "trainer",
}  # fmt: skip

__version__ = "0.1.0"

__all__ = [
    "ActivationCapture",
    "BatchGrid",
    "BatchNormRecalibration",
    "Callback",
    "CallbacksKitError",
    "CheckpointError",
    "ClassReport",
    "ConfusionMatrix",
    "EMA",
    "CsvImageDataset",
    "EarlyStopping",
    "Embeddings",
    "FeatureMaps",
    "FreezeUnfreeze",
    "GradCAM",
    "KernelGrid",
    "LayerNotFoundError",
    "LRFinder",
    "LRFinderResult",
    "LayerStats",
    "LearningRateScheduler",
    "MixUpCutMix",
    "MLPHead",
    "ModelCheckpoint",
    "Order",
    "PixelConfusionMatrix",
    "PreemptionHandler",
    "Profiler",
    "ProgressBar",
    "RunInfo",
    "SegmentationLoss",
    "SegmentationMetrics",
    "SegmentationOverlays",
    "SegmentationReport",
    "TensorBoardLogger",
    "TerminateOnNaN",
    "TopLosses",
    "TrainState",
    "Trainer",
    "TrainerError",
    "WeightHistograms",
    "WorstSegmentations",
    "accuracy",
    "evaluate_run",
    "evaluate_segmentation",
    "export_run",
    "load_run_model",
    "predict",
    "predict_masks",
    "resolve_module",
]


__getattr__, __dir__ = lazy_exports(__name__, _HOMES, __all__)
