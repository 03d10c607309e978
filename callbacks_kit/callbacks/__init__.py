"""Built-in callbacks."""

from callbacks_kit.callbacks.base import EVENTS, Callback, CallbackList
from callbacks_kit.callbacks.checkpoint import ModelCheckpoint
from callbacks_kit.callbacks.confusion import ConfusionMatrix
from callbacks_kit.callbacks.early_stopping import EarlyStopping, NonFiniteError, TerminateOnNaN
from callbacks_kit.callbacks.finetuning import FreezeUnfreeze
from callbacks_kit.callbacks.gradcam import GradCAM
from callbacks_kit.callbacks.histograms import WeightHistograms
from callbacks_kit.callbacks.images import FeatureMaps, KernelGrid
from callbacks_kit.callbacks.preemption import PreemptionHandler
from callbacks_kit.callbacks.progress import ProgressBar
from callbacks_kit.callbacks.scheduling import LRScheduler, ScheduleError
from callbacks_kit.callbacks.tensorboard import TensorBoardLogger

__all__ = [
    "EVENTS",
    "Callback",
    "CallbackList",
    "ConfusionMatrix",
    "EarlyStopping",
    "FeatureMaps",
    "FreezeUnfreeze",
    "GradCAM",
    "KernelGrid",
    "LRScheduler",
    "ModelCheckpoint",
    "NonFiniteError",
    "PreemptionHandler",
    "ProgressBar",
    "ScheduleError",
    "TensorBoardLogger",
    "TerminateOnNaN",
    "WeightHistograms",
]
