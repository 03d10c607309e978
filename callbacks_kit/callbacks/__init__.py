"""Built-in callbacks."""

from callbacks_kit.callbacks.base import EVENTS, Callback, CallbackList
from callbacks_kit.callbacks.progress import ProgressBar
from callbacks_kit.callbacks.tensorboard import TensorBoardLogger

__all__ = ["EVENTS", "Callback", "CallbackList", "ProgressBar", "TensorBoardLogger"]
