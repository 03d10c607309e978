"""EarlyStopping (a metric stopped improving) and TerminateOnNaN (a gradient went non-finite)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from callbacks_kit.callbacks.base import Callback
from callbacks_kit.callbacks.monitor import Monitor
from callbacks_kit.trainer import TrainerError

if TYPE_CHECKING:
    from callbacks_kit.trainer import Trainer


class NonFiniteError(TrainerError):
    """Training met a NaN or an infinity and was stopped before the weights took it in."""


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

    order = 150  # before ModelCheckpoint (200), so a checkpoint holds this epoch's counters

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


class TerminateOnNaN(Callback):
    """Stops training at the first NaN or infinite gradient, before the optimizer applies it.

    Checked right before each optimizer step, on the complete, reduced, unscaled gradients
    (identical on every process, so all of them stop together at no extra communication).
    A non-finite loss gives non-finite gradients, so it is caught at the same step. Raises
    `NonFiniteError` naming the step and the tensors: the weights and every checkpoint stay
    those of the previous step. One host sync per optimizer step.

    With fp16 loss scaling, infinite gradients are expected now and then (the scaler skips
    those steps and lowers its scale), so the check then looks at the loss instead.
    """

    order = -10  # before callbacks that read gradients in on_after_backward

    def on_after_backward(self, trainer: Trainer) -> None:
        if trainer.accelerator.scaler is not None:
            return
        grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
        if not grads or bool(torch.stack(torch._foreach_norm(grads)).isfinite().all()):
            return
        bad = [
            f"{name}.grad ({_kind(p.grad)})"
            for name, p in trainer.unwrapped_model.named_parameters()
            if p.grad is not None and not bool(p.grad.isfinite().all())
        ]
        self._stop(trainer, f"non-finite gradients in {len(bad)} tensor(s): {', '.join(bad[:5])}", applied=False)

    def on_train_batch_end(self, trainer: Trainer) -> None:
        loss = trainer.last_loss
        if trainer.accelerator.scaler is None or loss is None:
            return
        flag = (~torch.isfinite(loss)).float().reshape(1)
        if float(trainer.accelerator.reduce(flag, reduction="sum")) > 0:  # agreed: losses differ per process
            # The scaler skipped the step of a non-finite loss: the weights are still those of the last one.
            what = f"a non-finite loss ({float(loss):g} on this process)"
            self._stop(trainer, what, applied=trainer.state.optimizer_stepped)

    def _stop(self, trainer: Trainer, what: str, applied: bool) -> None:
        state = trainer.state
        step = state.global_step if applied else state.global_step + 1
        raise NonFiniteError(
            f"TerminateOnNaN: {what} at epoch {state.epoch + 1}, batch {state.batch_idx + 1}, optimizer step {step}. "
            "Training stopped before the weights took it in: they and the checkpoints are those of step "
            f"{step - 1}. Check the inputs of this batch, lower the learning rate or clip gradients (max_grad_norm)."
        )


def _kind(tensor: torch.Tensor) -> str:
    nan, inf = int(torch.isnan(tensor).sum()), int(torch.isinf(tensor).sum())
    return ", ".join(p for p in (f"{nan} NaN" if nan else "", f"{inf} inf" if inf else "") if p)
