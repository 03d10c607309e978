"""callbacks_kit: a minimal event-driven trainer on Accelerate, with callbacks for
LR scheduling, fine-tuning, checkpointing and TensorBoard inspection.
"""

from callbacks_kit.callbacks import (
    Callback,
    ClassReport,
    ConfusionMatrix,
    EarlyStopping,
    Embeddings,
    FeatureMaps,
    FreezeUnfreeze,
    GradCAM,
    KernelGrid,
    LRScheduler,
    ModelCheckpoint,
    Order,
    PreemptionHandler,
    ProgressBar,
    TensorBoardLogger,
    TerminateOnNaN,
    TopLosses,
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
    "Callback",
    "CallbacksKitError",
    "CheckpointError",
    "ClassReport",
    "ConfusionMatrix",
    "EarlyStopping",
    "Embeddings",
    "FeatureMaps",
    "FreezeUnfreeze",
    "GradCAM",
    "KernelGrid",
    "LayerNotFoundError",
    "LRScheduler",
    "ModelCheckpoint",
    "Order",
    "PreemptionHandler",
    "ProgressBar",
    "TensorBoardLogger",
    "TerminateOnNaN",
    "TopLosses",
    "TrainState",
    "Trainer",
    "TrainerError",
    "WeightHistograms",
    "accuracy",
    "resolve_module",
]
