"""callbacks_kit: a minimal event-driven trainer on Accelerate, with callbacks for
LR scheduling, fine-tuning, checkpointing and TensorBoard inspection.
"""

from callbacks_kit.callbacks import (
    BatchGrid,
    Callback,
    ConfusionMatrix,
    EarlyStopping,
    FeatureMaps,
    FreezeUnfreeze,
    GradCAM,
    KernelGrid,
    LayerStats,
    LRScheduler,
    ModelCheckpoint,
    Order,
    PreemptionHandler,
    ProgressBar,
    TensorBoardLogger,
    TerminateOnNaN,
    WeightHistograms,
)
from callbacks_kit.errors import CallbacksKitError, CheckpointError, LayerNotFoundError, TrainerError
from callbacks_kit.hooks import ActivationCapture
from callbacks_kit.layers import resolve_module
from callbacks_kit.metrics import accuracy
from callbacks_kit.state import TrainState
from callbacks_kit.trainer import Trainer

__version__ = "0.1.0"

__all__ = [
    "ActivationCapture",
    "BatchGrid",
    "Callback",
    "CallbacksKitError",
    "CheckpointError",
    "ConfusionMatrix",
    "EarlyStopping",
    "FeatureMaps",
    "FreezeUnfreeze",
    "GradCAM",
    "KernelGrid",
    "LayerNotFoundError",
    "LayerStats",
    "LRScheduler",
    "ModelCheckpoint",
    "Order",
    "PreemptionHandler",
    "ProgressBar",
    "TensorBoardLogger",
    "TerminateOnNaN",
    "TrainState",
    "Trainer",
    "TrainerError",
    "WeightHistograms",
    "accuracy",
    "resolve_module",
]
