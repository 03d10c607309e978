"""Built-in callbacks, one per module named for its class."""

from callbacks_kit.callbacks.base import EVENTS, Callback, CallbackList, Order
from callbacks_kit.callbacks.batch_grid import BatchGrid
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
from callbacks_kit.callbacks.preemption_handler import PreemptionHandler
from callbacks_kit.callbacks.progress_bar import ProgressBar
from callbacks_kit.callbacks.tensorboard_logger import TensorBoardLogger
from callbacks_kit.callbacks.terminate_on_nan import TerminateOnNaN
from callbacks_kit.callbacks.top_losses import TopLosses
from callbacks_kit.callbacks.weight_histograms import WeightHistograms
from callbacks_kit.errors import NonFiniteError, ScheduleError

__all__ = [
    "EVENTS",
    "BatchGrid",
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
    "PreemptionHandler",
    "ProgressBar",
    "ScheduleError",
    "TensorBoardLogger",
    "TerminateOnNaN",
    "TopLosses",
    "WeightHistograms",
]
