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
    """Stops training at the first NaN or infinite gradient, and never lets a checkpoint keep it.

    Each optimizer step records, on the device, whether the complete, reduced, unscaled
    gradients are finite (identical on every process). The host reads that flag only where it
    syncs anyway: at log steps, before validation, before every `ModelCheckpoint` save and at
    the end of fit. It then raises `NonFiniteError` naming the first bad optimizer step; no
    checkpoint saved after that step exists. A non-finite loss gives non-finite gradients, so
    it is caught the same way.

    With `check_every_n_steps=1` the flag is read before every optimizer step instead: the bad
    step is never applied and the error names the non-finite tensors, at one host sync per step.

    With fp16 loss scaling, infinite gradients are expected now and then (the scaler skips
    those steps and lowers its scale), so the flag records a non-finite loss instead.

    Args:
        check_every_n_steps: Also read the flag before every n-th optimizer step (None: only at
            the points above, no extra host sync).
    """

    order = -10  # before callbacks that read gradients in on_after_backward

    def __init__(self, check_every_n_steps: int | None = None) -> None:
        if check_every_n_steps is not None and (not isinstance(check_every_n_steps, int) or check_every_n_steps < 1):
            raise TrainerError(
                f"TerminateOnNaN(check_every_n_steps={check_every_n_steps!r}): give a positive int, "
                "or None to check only where the host syncs anyway"
            )
        self.check_every_n_steps = check_every_n_steps
        self._first_bad: torch.Tensor | None = None  # on the device: first non-finite step, or -1
        self._what = "gradients"

    def on_fit_start(self, trainer: Trainer) -> None:
        self._first_bad = torch.full((), -1, dtype=torch.long, device=trainer.device)
        self._what = "loss" if trainer.accelerator.scaler is not None else "gradients"

    def on_after_backward(self, trainer: Trainer) -> None:
        if trainer.accelerator.scaler is not None:
            return
        grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
        if not grads:
            return
        finite = torch.stack(torch._foreach_norm(grads)).isfinite().all()
        self._record(~finite, trainer.state.global_step + 1)
        n = self.check_every_n_steps
        if n is not None and (trainer.state.global_step + 1) % n == 0 and not bool(finite):
            bad = [
                f"{name}.grad ({_kind(p.grad)})"
                for name, p in trainer.unwrapped_model.named_parameters()
                if p.grad is not None and not bool(p.grad.isfinite().all())
            ]
            state = trainer.state
            raise NonFiniteError(
                f"TerminateOnNaN: non-finite gradients in {len(bad)} tensor(s): {', '.join(bad[:5])} at epoch "
                f"{state.epoch + 1}, batch {state.batch_idx + 1}, optimizer step {state.global_step + 1}. Training "
                f"stopped before the weights took it in: they and the checkpoints are those of step "
                f"{state.global_step}. {_ADVICE}"
            )

    def on_train_batch_end(self, trainer: Trainer) -> None:
        loss = trainer.last_loss
        if trainer.accelerator.scaler is not None and loss is not None:
            # The scaler skips the step of a non-finite loss: the weights stay those of the last step.
            state = trainer.state
            step = state.global_step if state.optimizer_stepped else state.global_step + 1
            self._record(~torch.isfinite(loss.detach()).all(), step)
            n = self.check_every_n_steps
            if n is not None and state.optimizer_stepped and step % n == 0:
                self.check(trainer)
        if trainer.state.is_log_step:
            self.check(trainer)

    def on_validation_start(self, trainer: Trainer) -> None:
        self.check(trainer)

    def on_fit_end(self, trainer: Trainer) -> None:
        self.check(trainer)

    def check(self, trainer: Trainer) -> None:
        """Read the device flag (one host sync) and raise `NonFiniteError` if a step went bad.

        Every process must call it at the same point: with fp16 the loss flags are reduced.
        """
        if self._first_bad is None:
            return
        flags = self._first_bad.reshape(1)
        if trainer.accelerator.num_processes > 1:  # fp16 losses differ per process; gradients do not
            flags = trainer.accelerator.gather(flags)
        seen = [int(step) for step in flags.tolist() if step >= 0]
        first = min(seen) if seen else -1
        if first < 0:
            return
        self._first_bad = None  # raise once
        state = trainer.state
        raise NonFiniteError(
            f"TerminateOnNaN: non-finite {self._what} at optimizer step {first} (found at step {state.global_step}, "
            f"epoch {state.epoch + 1}). No checkpoint from step {first} on was saved; the latest one before it is "
            "clean: resume from it. To stop before the bad step is applied and see which tensors went non-finite, "
            "use TerminateOnNaN(check_every_n_steps=1) (one host sync per step). " + _ADVICE
        )

    def _record(self, bad: torch.Tensor, step: int) -> None:
        if self._first_bad is not None:
            self._first_bad = torch.where(bad & (self._first_bad < 0), step, self._first_bad)


_ADVICE = "Check the inputs of this batch, lower the learning rate or clip gradients (max_grad_norm)."


def _kind(tensor: torch.Tensor) -> str:
    nan, inf = int(torch.isnan(tensor).sum()), int(torch.isinf(tensor).sum())
    return ", ".join(p for p in (f"{nan} NaN" if nan else "", f"{inf} inf" if inf else "") if p)
