"""Weight and gradient histograms, binned on the device so only the bins reach the host."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from callbacks_kit.callbacks.base import Callback, Order
from callbacks_kit.errors import TrainerError
from callbacks_kit.inspection.histogram import compute_histograms, write_histogram

if TYPE_CHECKING:
    from callbacks_kit.trainer import Trainer

ParamFilter = str | re.Pattern[str] | Callable[[str, nn.Parameter], bool]


class WeightHistograms(Callback):
    """Histograms of the weights (`weights/<param>`) and gradients (`grads/<param>`).

    Binned on the device (`compute_histograms`) and written with `add_histogram_raw`:
    several times faster than `add_histogram` on a CPU, and on a GPU only the bins move.
    Gradients are read in `on_after_backward`: complete, unscaled, before clipping and
    before they are zeroed, and only on batches where the optimizer steps.

    Cadence: every `every_n_steps` optimizer steps when given (weights after the step,
    gradients of that step); otherwise every `every_n_epochs` epochs (weights at the
    epoch end, gradients of the epoch's last step). Weights are also logged at the start.

    Args:
        every_n_steps: Log every this many optimizer steps; None logs per epoch.
        every_n_epochs: Epochs between logs when `every_n_steps` is None.
        weights: Log weight histograms.
        grads: Log gradient histograms.
        include: Which parameters: a regex searched in the parameter name (e.g.
            `r"conv|fc"`), or `(name, param) -> bool`; None means all of them.
        bins: Buckets per histogram.
        log_at_start: Also log the weights once when training starts.
    """

    order = Order.INSPECT

    def __init__(
        self,
        every_n_steps: int | None = None,
        every_n_epochs: int = 1,
        weights: bool = True,
        grads: bool = True,
        include: ParamFilter | None = None,
        bins: int = 30,
        log_at_start: bool = True,
    ) -> None:
        if every_n_steps is not None and every_n_steps < 1:
            raise TrainerError(f"every_n_steps must be >= 1 or None, got {every_n_steps}")
        if every_n_epochs < 1 or bins < 1:
            raise TrainerError(f"every_n_epochs and bins must be >= 1, got {every_n_epochs} and {bins}")
        self.every_n_steps = every_n_steps
        self.every_n_epochs = every_n_epochs
        self.weights = weights
        self.grads = grads
        if isinstance(include, str):
            try:
                include = re.compile(include)
            except re.error as exc:
                raise TrainerError(
                    f"WeightHistograms: include={include!r} is not a valid regular expression ({exc}); "
                    "e.g. 'conv|fc' (--hist-include)"
                ) from exc
        self.include = include
        self.bins = bins
        self.log_at_start = log_at_start
        self._warned: set[str] = set()
        self._grads_epoch = -1

    def on_fit_start(self, trainer: Trainer) -> None:
        if self.include is not None:
            named = list(trainer.unwrapped_model.named_parameters())
            if not any(self._selected(name, p) for name, p in named):
                shown = ", ".join(name for name, _ in named[:6])
                raise TrainerError(
                    f"WeightHistograms: include={getattr(self.include, 'pattern', self.include)!r} matches none "
                    f"of the model's {len(named)} parameters (e.g. {shown}); no histogram would be written. "
                    "Fix the pattern (--hist-include), searched in these names"
                )
        if self.weights and self.log_at_start and trainer.tb_writer is not None:
            self.log(trainer, "weights", trainer.state.global_step)

    def on_after_backward(self, trainer: Trainer) -> None:
        if not self.grads or trainer.tb_writer is None:
            return
        state, step = trainer.state, trainer.state.global_step + 1  # the step these gradients make
        if self.every_n_steps is not None:
            due = step % self.every_n_steps == 0
        elif (state.epoch + 1) % self.every_n_epochs:
            due = False
        elif state.batches_per_epoch is not None:
            due = state.batch_idx + 1 >= state.batches_per_epoch  # the epoch's last step
        else:
            due = self._grads_epoch != state.epoch  # length unknown: the epoch's first step
        if due:
            self.log(trainer, "grads", step)

    def on_train_batch_end(self, trainer: Trainer) -> None:
        state = trainer.state
        if not self.weights or trainer.tb_writer is None or self.every_n_steps is None:
            return
        if state.optimizer_stepped and state.global_step % self.every_n_steps == 0:
            self.log(trainer, "weights", state.global_step)

    def on_epoch_end(self, trainer: Trainer) -> None:
        state = trainer.state
        if self.weights and trainer.tb_writer is not None and self.every_n_steps is None:
            if (state.epoch + 1) % self.every_n_epochs == 0:
                self.log(trainer, "weights", state.global_step)

    def log(self, trainer: Trainer, kind: str, step: int) -> None:
        """Write `weights/<param>` or `grads/<param>` (kind "weights" or "grads") now."""
        writer = trainer.tb_writer
        if writer is None:
            return
        named: list[tuple[str, torch.Tensor]] = [
            (name, p) for name, p in trainer.unwrapped_model.named_parameters() if self._selected(name, p)
        ]
        if kind == "grads":
            named = [(name, p.grad) for name, p in named if p.grad is not None]
        for (name, _), histogram in zip(named, compute_histograms([t for _, t in named], self.bins), strict=True):
            tag = f"{kind}/{name}"
            if histogram is not None and histogram.nonfinite and tag not in self._warned:
                self._warned.add(tag)
                warnings.warn(
                    f"{tag} has {histogram.nonfinite} NaN/inf values at step {step}; "
                    "they are left out of its histogram",
                    RuntimeWarning,
                    stacklevel=2,
                )
            if histogram is not None:
                write_histogram(writer, tag, histogram, step)
        if kind == "grads":
            self._grads_epoch = trainer.state.epoch

    def _selected(self, name: str, param: nn.Parameter) -> bool:
        if self.include is None:
            return True
        if isinstance(self.include, re.Pattern):
            return self.include.search(name) is not None
        return bool(self.include(name, param))
