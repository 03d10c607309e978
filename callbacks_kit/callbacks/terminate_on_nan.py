"""TerminateOnNaN: stop at the first non-finite gradient, before any checkpoint can keep it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from callbacks_kit.callbacks.base import Callback, Order
from callbacks_kit.callbacks.model_checkpoint import ModelCheckpoint
from callbacks_kit.errors import NonFiniteError, TrainerError
from callbacks_kit.norms import all_finite

if TYPE_CHECKING:
    from callbacks_kit.trainer import Trainer


class TerminateOnNaN(Callback):
    """Stops training at the first NaN or infinite gradient, and never lets a checkpoint keep it.

    Each optimizer step records, on the device, whether the complete, reduced, unscaled
    gradients are finite (identical on every process). The host reads that flag only where it
    syncs anyway: at log steps, before validation, before every `ModelCheckpoint` save (in
    `on_save_checkpoint`) and at the end of fit. It then raises `NonFiniteError` naming the
    first bad optimizer step; no checkpoint saved after that step exists. A non-finite loss
    gives non-finite gradients, so it is caught the same way.

    With `check_every_n_steps=1` the flag is read before every optimizer step instead: the bad
    step is never applied and the error names the non-finite tensors, at one host sync per step.

    With fp16 loss scaling, infinite gradients are expected now and then (the scaler skips
    those steps and lowers its scale), so the flag records a non-finite loss instead. A finite
    loss with NaN gradients makes the scaler skip every step while its scale decays to
    nothing: so more than `max_skipped_steps` skipped steps in a row (counted from
    `state.step_skipped`, a host bool: no sync) also raise `NonFiniteError`.

    Args:
        check_every_n_steps: Also read the flag before every n-th optimizer step (None: only at
            the points above, no extra host sync).
        max_skipped_steps: With fp16, stop after this many consecutive optimizer steps skipped
            by the loss scaler (None: never). A healthy run skips a few in a row at most, while
            the scale comes down from its initial 65536.
    """

    order = Order.GUARD

    def __init__(self, check_every_n_steps: int | None = None, max_skipped_steps: int | None = 50) -> None:
        if check_every_n_steps is not None and (not isinstance(check_every_n_steps, int) or check_every_n_steps < 1):
            raise TrainerError(
                f"TerminateOnNaN(check_every_n_steps={check_every_n_steps!r}): give a positive int, "
                "or None to check only where the host syncs anyway"
            )
        if max_skipped_steps is not None and (
            isinstance(max_skipped_steps, bool) or not isinstance(max_skipped_steps, int) or max_skipped_steps < 1
        ):
            raise TrainerError(
                f"TerminateOnNaN(max_skipped_steps={max_skipped_steps!r}): give a positive int, or None to never "
                "stop on skipped fp16 steps"
            )
        self.check_every_n_steps = check_every_n_steps
        self.max_skipped_steps = max_skipped_steps
        self._skipped_in_a_row = 0
        self._first_bad: torch.Tensor | None = None  # on the device: first non-finite step, or -1
        self._what = "gradients"

    def on_fit_start(self, trainer: Trainer) -> None:
        self._skipped_in_a_row = 0
        self._first_bad = torch.full((), -1, dtype=torch.long, device=trainer.device)
        self._what = "loss" if trainer.accelerator.scaler is not None else "gradients"

    def on_after_backward(self, trainer: Trainer) -> None:
        if trainer.accelerator.scaler is not None:
            return
        grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
        if not grads:
            return
        finite = all_finite(grads)
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
                f"{state.global_step}. {_advice(trainer)}"
            )

    def on_train_batch_end(self, trainer: Trainer) -> None:
        self._count_skipped(trainer)
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

    def on_save_checkpoint(self, trainer: Trainer) -> None:
        self.check(trainer)  # before a checkpoint could keep non-finite weights

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
            f"epoch {state.epoch + 1}). {_saved(trainer, first)} To stop before the bad step is applied and see "
            "which tensors went non-finite, use TerminateOnNaN(check_every_n_steps=1) (one host sync per step). "
            + _advice(trainer)
        )

    def _count_skipped(self, trainer: Trainer) -> None:
        state = trainer.state
        if not state.optimizer_stepped:
            return
        self._skipped_in_a_row = self._skipped_in_a_row + 1 if state.step_skipped else 0
        limit = self.max_skipped_steps
        if limit is not None and self._skipped_in_a_row > limit:
            scaler = trainer.accelerator.scaler
            scale = f" (loss scale now {float(scaler.get_scale()):.3g})" if scaler is not None else ""
            raise NonFiniteError(
                f"TerminateOnNaN: the fp16 loss scaler skipped {self._skipped_in_a_row} optimizer steps in a row "
                f"(steps {state.global_step - self._skipped_in_a_row + 1} to {state.global_step}){scale}: the "
                "gradients are non-finite at every scale although the loss is finite, so nothing trains. Look for "
                "NaN in the gradients with mixed_precision='bf16' or 'no' and TerminateOnNaN(check_every_n_steps=1). "
                + _advice(trainer)
            )

    def _record(self, bad: torch.Tensor, step: int) -> None:
        if self._first_bad is not None:
            self._first_bad = torch.where(bad & (self._first_bad < 0), step, self._first_bad)


def _advice(trainer: Trainer) -> str:
    lrs = sorted({float(group["lr"]) for group in trainer.optimizer.param_groups})
    lr = ", ".join(f"{v:g}" for v in lrs[:4])
    return (
        f"Lower the learning rate (now {lr}; --lr), clip gradients (max_grad_norm, --max-grad-norm) "
        "or check the inputs of this batch."
    )


def _saved(trainer: Trainer, first: int) -> str:
    """Where a clean checkpoint is, if the run has one: the message must not promise one that does not exist."""
    names = [c.last_name for c in trainer.callbacks.find(ModelCheckpoint) if c.last_name]
    if names:
        return f"No checkpoint from step {first} on was saved; the latest, {names[0]}, is clean: resume from it."
    return "No checkpoint was saved (none is kept with non-finite weights): start again with the changes below."


def _kind(tensor: torch.Tensor) -> str:
    nan, inf = int(torch.isnan(tensor).sum()), int(torch.isinf(tensor).sum())
    return ", ".join(p for p in (f"{nan} NaN" if nan else "", f"{inf} inf" if inf else "") if p)
