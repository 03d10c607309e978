"""callbacks_kit: a minimal event-driven trainer on Accelerate, with callbacks for
LR scheduling, fine-tuning, checkpointing and TensorBoard inspection.
"""

from callbacks_kit.callbacks import Callback, ProgressBar, TensorBoardLogger
from callbacks_kit.metrics import accuracy
from callbacks_kit.state import TrainState
from callbacks_kit.trainer import Trainer, TrainerError

__version__ = "0.1.0"

__all__ = ["Callback", "ProgressBar", "TensorBoardLogger", "TrainState", "Trainer", "TrainerError", "accuracy"]
