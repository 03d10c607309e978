"""LRFinder: the LR range test (Smith 2015, fastai's lr_find) on a Trainer, which is left exactly as it was.

finder = LRFinder(min_lr=1e-6, max_lr=1.0, steps=100)
result = finder.run(trainer, train_loader)   # model, optimizer, schedulers, RNG restored
result.log(writer)                            # curve image, scalars, suggestion as text
result.apply(trainer.optimizer)               # train with the suggestion

`range_test` runs it with given modules frozen for the sweep only (those that training starts
with frozen) and writes the result to a TensorBoard run: what `callbacks-kit lr-find` and
`train --lr auto` run.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch
from accelerate.data_loader import DataLoaderDispatcher, DataLoaderShard
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from callbacks_kit.checkpoint.codec import apply_rng_states, capture_rng_states
from callbacks_kit.checks import check_train_batches
from callbacks_kit.compat import fast_event_checksums
from callbacks_kit.errors import ScheduleError, TrainerError
from callbacks_kit.finetune import freeze, unfreeze
from callbacks_kit.inspection.line_chart import BLUE, LIGHT_BLUE, line_chart

if TYPE_CHECKING:
    from callbacks_kit.trainer import Trainer

# Why this rule: it stays on the descending part of the curve, a decade below where the loss
# stops falling (fastai v1's rule of thumb), and moves less from run to run than the steepest
# point of a short, noisy sweep (reported next to it as `steepest`).
RULE = "the LR of the lowest smoothed loss / 10"
# The first tenth of a sweep is left out of the steepest descent: at the lowest LRs the loss
# moves by batch-to-batch noise alone, which the debiased average has seen few batches of, and
# divided by a small step in log LR that noise makes the steepest slope (fastai v1 skipped the
# first 10 of 100 steps alike). The steepest descent is looked for up to the lowest loss.
NOISY_START = 0.1


class Stateful(Protocol):
    """Anything with `state_dict` and `load_state_dict` (an LR scheduler)."""

    def state_dict(self) -> dict[str, Any]:
        """The state to restore."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Put `state` back."""
        ...


@dataclass
class LRFinderResult:
    """The sweep: per step the reference group's LR, the loss (averaged across processes) and its smoothed value.

    Attributes:
        lrs, losses, smoothed: One entry per step taken.
        base_lr: The reference group's LR before the test (the largest of the groups); every
            group swept in proportion to its own LR, so group `g` had `lr * base_g / base_lr`.
        suggestion: The suggested LR for the reference group (`RULE`), None without a usable curve.
        steepest: The LR of the steepest descent of the smoothed curve before its lowest point, the
            first `NOISY_START` of the sweep left out; for comparison (None when nothing is left).
        diverged: True when the sweep stopped early because the loss diverged.
        notes: Warnings about the curve (a minimum at the range's start...).
    """

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    base_lr: float
    suggestion: float | None
    steepest: float | None
    diverged: bool
    notes: list[str] = field(default_factory=list)
    rule: str = RULE

    def summary(self) -> str:
        """One paragraph: the suggestion, its rule, and how the sweep ended."""
        if self.suggestion is None:
            return "LR range test: no suggestion (" + "; ".join(self.notes or ["no finite loss"]) + ")"
        ended = "stopped when the loss diverged" if self.diverged else "ran the whole range"
        steepest = f"at {self.steepest:.3g}" if self.steepest is not None else "not found after the first steps"
        text = (
            f"suggested LR {self.suggestion:.3g} ({self.rule}); steepest descent {steepest}; "
            f"the sweep {ended} after {len(self.lrs)} steps, from {self.lrs[0]:.3g} to {self.lrs[-1]:.3g}"
        )
        return text + "".join(f". Note: {note}" for note in self.notes)

    def image(self) -> torch.Tensor:
        """The loss against the LR (log scale) as a `(3, H, W)` image, the suggestion marked in red."""
        title = "LR range test" + (f": suggestion {self.suggestion:.3g}" if self.suggestion else "")
        return line_chart(
            self.lrs,
            [(self.losses, LIGHT_BLUE), (self.smoothed, BLUE)],
            log_x=True,
            marker=self.suggestion,
            title=title,
            x_label="learning rate (log scale)",
            y_label="loss (raw, smoothed)",
        )

    def log(self, writer: SummaryWriter | None, tag: str = "lr_find") -> None:
        """Scalars per step (`<tag>/lr`, `<tag>/loss`, `<tag>/smoothed_loss`), the curve image and the text."""
        if writer is None:
            return
        for step, (lr, loss, smooth) in enumerate(zip(self.lrs, self.losses, self.smoothed, strict=True)):
            writer.add_scalar(f"{tag}/lr", lr, step)
            writer.add_scalar(f"{tag}/loss", loss, step)
            writer.add_scalar(f"{tag}/smoothed_loss", smooth, step)
        writer.add_image(f"{tag}/curve", self.image(), 0)
        writer.add_text(f"{tag}/suggestion", self.summary(), 0)
        writer.flush()

    def apply(self, optimizer: torch.optim.Optimizer) -> None:
        """Give every param group of `optimizer` the suggestion, keeping the ratios between the groups."""
        if self.suggestion is None:
            reasons = "; ".join(self.notes or ["no finite loss"])
            raise ScheduleError(f"LRFinderResult: the sweep gave no suggestion to apply ({reasons})")
        for group in optimizer.param_groups:
            group["lr"] = self.suggestion * group["lr"] / self.base_lr

    @classmethod
    def from_curve(
        cls,
        lrs: list[float],
        losses: list[float],
        smoothed: list[float],
        base_lr: float,
        diverged: bool,
        planned_steps: int | None = None,
    ) -> LRFinderResult:
        """The result of a sweep's curve: the suggestion (`RULE`), the steepest descent, notes on a poor curve.

        Args:
            lrs: The reference group's LR at each step taken.
            losses: The loss at each step (averaged across processes).
            smoothed: The smoothed loss at each step.
            base_lr: The reference group's LR before the sweep.
            diverged: The sweep stopped because the loss diverged (its last point is no candidate).
            planned_steps: The steps the sweep was to take (default: those taken); the first
                `NOISY_START` of them are left out of the steepest descent.
        """
        notes: list[str] = []
        usable = [i for i, value in enumerate(smoothed[:-1] if diverged else smoothed) if math.isfinite(value)]
        if len(usable) < 3:
            notes.append("fewer than 3 finite points: widen the range or lower min_lr")
            return cls(lrs, losses, smoothed, base_lr, None, None, diverged, notes)
        lowest = min(usable, key=lambda i: smoothed[i])
        suggestion = lrs[lowest] / 10
        logs = [math.log10(lr) for lr in lrs]
        first = max(1, math.ceil((planned_steps or len(lrs)) * NOISY_START))
        candidates = [i for i in usable[1:-1] if first <= i <= lowest]
        slopes = {i: (smoothed[i + 1] - smoothed[i - 1]) / (logs[i + 1] - logs[i - 1]) for i in candidates}
        steepest = lrs[min(slopes, key=slopes.__getitem__)] if slopes else None
        if lowest == usable[0]:
            notes.append("the loss was lowest at the start of the range: lower min_lr")
        if not diverged and lowest == usable[-1]:
            notes.append("the loss still fell at the end of the range: raise max_lr")
        return cls(lrs, losses, smoothed, base_lr, suggestion, steepest, diverged, notes)


class LRFinder:
    """An exponential LR sweep from `min_lr` to `max_lr` over `steps` optimizer steps.

    Every param group is scaled in proportion to its LR before the test, so a backbone at
    a tenth of the head's LR stays at a tenth; frozen parameters (no gradient) stay frozen.
    The loss is averaged across processes each step (all processes see the same LRs and
    losses, so they agree on the suggestion) and smoothed with fastai's debiased EMA
    (`beta`); the sweep stops when the smoothed loss exceeds `diverge` times its best or
    is not finite. Afterwards the weights and buffers, the modules' train/eval modes, the
    optimizer (state and LRs), the given schedulers, the fp16 scaler, Accelerate's step
    counter and every RNG are restored bit for bit, so training after the test is what it
    would have been without it. Each step reads the loss on the host (one sync per step).

    Args:
        min_lr, max_lr: The range of the reference group's LR (the group with the largest LR).
        steps: Optimizer steps of the sweep (batches: the loader is cycled if shorter).
        beta: Smoothing of the loss, in [0, 1); fastai's 0.98.
        diverge: Stop once the smoothed loss exceeds this many times its best (> 1).
    """

    def __init__(
        self, min_lr: float = 1e-7, max_lr: float = 10.0, steps: int = 100, beta: float = 0.98, diverge: float = 4.0
    ) -> None:
        for name, value in (("min_lr", min_lr), ("max_lr", max_lr)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < math.inf):
                raise ScheduleError(f"LRFinder: {name} must be a positive finite number, got {value!r}")
        if min_lr >= max_lr:
            raise ScheduleError(
                f"LRFinder: the LR range must go up: min_lr {min_lr:g} is not below max_lr {max_lr:g}; "
                "e.g. min_lr=1e-7, max_lr=10 (--lr-find-min / --lr-find-max)"
            )
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 5:
            raise ScheduleError(f"LRFinder: steps must be an int >= 5 (100 is usual), got {steps!r}")
        if not (0 <= beta < 1):
            raise ScheduleError(f"LRFinder: beta must be in [0, 1), got {beta!r}")
        if not diverge > 1:
            raise ScheduleError(f"LRFinder: diverge must be above 1 (4 is usual), got {diverge!r}")
        self.min_lr, self.max_lr, self.steps, self.beta, self.diverge = min_lr, max_lr, steps, beta, diverge

    def lrs(self) -> list[float]:
        """The reference group's LR at each step: geometric from `min_lr` to `max_lr`."""
        ratio = self.max_lr / self.min_lr
        return [self.min_lr * ratio ** (i / (self.steps - 1)) for i in range(self.steps)]

    def run(
        self, trainer: Trainer, loader: Iterable[Any], schedulers: Sequence[Stateful] = (), progress: bool = False
    ) -> LRFinderResult:
        """Sweep on `trainer`'s model and optimizer with batches of `loader`; everything is restored after.

        Args:
            trainer: A Trainer that is not fitting; its `forward` computes the loss.
            loader: Training batches (a DataLoader is prepared for the processes).
            schedulers: LR schedulers already attached to the optimizer, restored too.
            progress: Show a tqdm bar of the steps with the LR and the smoothed loss (main process).
        """
        if trainer.state.stage != "idle":
            raise TrainerError("LRFinder: run it before or after fit, not from a callback during training")
        groups = trainer.optimizer.param_groups
        base_lr = max(float(group["lr"]) for group in groups)
        if not base_lr > 0:
            raise ScheduleError("LRFinder: every param group has LR 0; give the groups their LRs (the ratios matter)")
        ratios = [float(group["lr"]) / base_lr for group in groups]
        if not any(p.requires_grad for group in groups for p in group["params"]):
            raise TrainerError(
                "LRFinder: every parameter of the optimizer is frozen (requires_grad=False), so the sweep would "
                "change nothing and measure nothing; unfreeze the layers that train first (finetune.unfreeze), or "
                "run the test before freezing them all"
            )
        if isinstance(loader, DataLoader) and not isinstance(loader, (DataLoaderShard, DataLoaderDispatcher)):
            check_train_batches(trainer, loader)  # batches of one sample that a BatchNorm cannot train on
            loader = trainer.accelerator.prepare(loader)  # inside the snapshot: preparing may draw from the RNG
        snapshot = _Snapshot(trainer, schedulers)
        bar = tqdm(
            total=self.steps, desc="LR range test", unit="step", disable=not (progress and trainer.is_main_process)
        )
        try:
            lrs, losses, smoothed, diverged = self._sweep(trainer, loader, ratios, bar)
        finally:
            bar.close()
            snapshot.restore()
        return LRFinderResult.from_curve(lrs, losses, smoothed, base_lr, diverged, self.steps)

    def _sweep(
        self, trainer: Trainer, loader: Iterable[Any], ratios: list[float], bar: tqdm
    ) -> tuple[list[float], list[float], list[float], bool]:
        accelerator, optimizer = trainer.accelerator, trainer.optimizer
        model = trainer.model
        if not model.training:
            model.train()  # frozen BatchNorm layers of a model in train mode keep their eval mode
        accelerator.sync_gradients = True  # every batch is one optimizer step
        lrs, losses, smoothed = [], [], []
        average, best = 0.0, math.inf
        batches = _cycle(loader)
        try:
            for step, lr in enumerate(self.lrs()):
                for group, ratio in zip(optimizer.param_groups, ratios, strict=True):
                    group["lr"] = lr * ratio
                inputs, targets = trainer.unpack_batch(next(batches))
                loss, _ = trainer.forward(inputs, targets)
                # Accelerate divides by the accumulation steps; each sweep step is one whole batch.
                accelerator.backward(loss * accelerator.gradient_accumulation_steps)
                if trainer.max_grad_norm is not None:
                    accelerator.unscale_gradients()
                    torch.nn.utils.clip_grad_norm_(model.parameters(), trainer.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                value = float(accelerator.reduce(loss.detach().float(), reduction="mean"))
                if step == 0 and not math.isfinite(value):
                    raise TrainerError(
                        f"LRFinder: the loss is {value} at the first step, at LR {lr:.3g}: check the data and the "
                        "loss function, or lower min_lr"
                    )
                average = self.beta * average + (1 - self.beta) * value
                smooth = average / (1 - self.beta ** (step + 1))
                lrs.append(lr)
                losses.append(value)
                smoothed.append(smooth)
                bar.set_postfix_str(f"lr {lr:.2e}, loss {smooth:.4g}", refresh=False)
                bar.update()
                if not math.isfinite(smooth) or smooth > self.diverge * best:
                    return lrs, losses, smoothed, True
                best = min(best, smooth)
        finally:
            batches.close()
        return lrs, losses, smoothed, False


def range_test(
    finder: LRFinder,
    trainer: Trainer,
    loader: Iterable[Any],
    frozen: Sequence[str] = (),
    log_dir: str | None = None,
    progress: bool = False,
) -> LRFinderResult:
    """`finder.run(trainer, loader)` with the modules named in `frozen` frozen for the sweep only.

    Freezing what training starts with frozen (a `FreezeUnfreeze` backbone) measures the LR
    of the layers that train first; the modules are unfrozen afterwards, and
    `FreezeUnfreeze` freezes them again when training starts.

    Args:
        finder: The sweep.
        trainer: A Trainer that is not fitting.
        loader: Training batches.
        frozen: Names of modules of `trainer.unwrapped_model` (e.g. `finetune.backbone_blocks(model)`).
        log_dir: A TensorBoard run the main process writes the result to (`LRFinderResult.log`); None: none.
        progress: Show the sweep's progress bar (`LRFinder.run`).
    """
    model = trainer.unwrapped_model
    modules = [model.get_submodule(name) for name in frozen]
    if modules:
        freeze(modules)
        trainer.refresh_trainable()
    try:
        result = finder.run(trainer, loader, progress=progress)
    finally:
        if modules:
            unfreeze(modules)
            trainer.refresh_trainable()
    if log_dir is not None and trainer.is_main_process:
        fast_event_checksums()
        writer = SummaryWriter(log_dir)
        result.log(writer)
        writer.close()
    return result


class _Snapshot:
    """Everything a sweep changes, copied before and put back after."""

    def __init__(self, trainer: Trainer, schedulers: Sequence[Stateful]) -> None:
        self.trainer, self.schedulers = trainer, list(schedulers)
        model = trainer.unwrapped_model
        self.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.modes = [m.training for m in trainer.model.modules()]
        self.optimizer = copy.deepcopy(trainer.optimizer.state_dict())
        self.scheduler_states = [copy.deepcopy(s.state_dict()) for s in self.schedulers]
        scaler = trainer.accelerator.scaler
        self.scaler = copy.deepcopy(scaler.state_dict()) if scaler is not None else None
        self.step, self.sync = trainer.accelerator.step, trainer.accelerator.sync_gradients
        self.rng = capture_rng_states()

    def restore(self) -> None:
        trainer = self.trainer
        trainer.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            trainer.unwrapped_model.load_state_dict(self.weights)
        for module, mode in zip(trainer.model.modules(), self.modes, strict=True):
            module.training = mode
        trainer.optimizer.load_state_dict(self.optimizer)
        for scheduler, state in zip(self.schedulers, self.scheduler_states, strict=True):
            scheduler.load_state_dict(state)
        if self.scaler is not None and trainer.accelerator.scaler is not None:
            trainer.accelerator.scaler.load_state_dict(self.scaler)
        trainer.accelerator.step, trainer.accelerator.sync_gradients = self.step, self.sync
        apply_rng_states(self.rng)


def _cycle(loader: Iterable[Any]) -> Generator[Any, None, None]:
    """Batches of `loader` without end; an Accelerate loader left mid-way is told so (it registers while iterating)."""
    while True:
        iterator, finished, seen = iter(loader), False, 0
        try:
            for batch in iterator:
                seen += 1
                yield batch
            finished = True
        finally:
            end = getattr(loader, "end", None)
            if not finished and callable(end):
                end()
        if not seen:
            raise TrainerError("LRFinder: the loader yielded no batches; check the dataset and batch size")
