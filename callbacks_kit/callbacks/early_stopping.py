"""EarlyStopping: stop when a monitored metric has stopped improving."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from callbacks_kit.callbacks.base import Callback, Order
from callbacks_kit.callbacks.monitor import Monitor
from callbacks_kit.errors import TrainerError

if TYPE_CHECKING:
    from callbacks_kit.trainer import Trainer


class EarlyStopping(Callback):
    """Stops training when `monitor` has not improved by more than `min_delta` for `patience` epochs.

    Checked at every epoch end, after validation. Its counters are saved with every
    checkpoint, so a resumed run stops at the same epoch as an uninterrupted one.

    Args:
        monitor: Metric to watch, e.g. "val/loss" or "val/accuracy".
        patience: Epochs without improvement before stopping.
        min_delta: Smallest change that counts as an improvement.
        mode: "min" or "max": which direction is better.
    """

    order = Order.STOP  # before ModelCheckpoint, so a checkpoint holds this epoch's counters

    def __init__(self, monitor: str = "val/loss", patience: int = 3, min_delta: float = 0.0, mode: str = "min") -> None:
        self.monitor = Monitor(monitor, mode, min_delta, owner="EarlyStopping")
        if not isinstance(patience, int) or patience < 1:
            raise TrainerError(f"EarlyStopping: patience must be an int >= 1, got {patience!r}")
        self.patience = patience
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.wait = 0
        self.stopped_epoch: int | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait, "stopped": self.stopped_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch = state["best"], state["best_epoch"]
        self.wait, self.stopped_epoch = int(state["wait"]), state["stopped"]

    def on_fit_start(self, trainer: Trainer) -> None:
        if trainer.state.global_step == 0:  # a new run; a resumed one keeps its restored counters
            self.best, self.best_epoch, self.wait, self.stopped_epoch = None, None, 0, None

    def on_epoch_end(self, trainer: Trainer) -> None:
        state = trainer.state
        score = self.monitor.read(trainer)
        if self.monitor.is_better(score, self.best):
            self.best, self.best_epoch, self.wait = score, state.epoch + 1, 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            state.should_stop = True
            self.stopped_epoch = state.epoch + 1
            best = "none (every value was NaN)" if self.best is None else f"{self.best:.6g} at epoch {self.best_epoch}"
            trainer.print(
                f"early stopping at epoch {self.stopped_epoch}: {self.monitor.key} has not improved by more than "
                f"{self.monitor.min_delta:g} for {self.wait} epoch(s); best {best}"
            )
