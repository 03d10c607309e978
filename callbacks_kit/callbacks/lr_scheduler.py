"""LearningRateScheduler: steps any PyTorch LR scheduler, a plain `lr_at` function, and warmup, after the optimizer.

`LRScheduler` is its former name, kept until 0.2.0 as a deprecated subclass that warns when built.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler as TorchScheduler
from torch.optim.lr_scheduler import ReduceLROnPlateau

from callbacks_kit.callbacks.base import Callback, Order
from callbacks_kit.checkpoint.codec import tag_json, untag_json
from callbacks_kit.compat import nested_schedulers, one_cycle_phase_ends, scheduler_lr_lists
from callbacks_kit.distributed import unwrapped_optimizer
from callbacks_kit.errors import ScheduleError

if TYPE_CHECKING:
    from typing_extensions import TypeIs

    from callbacks_kit.trainer import Trainer

Scheduler = TorchScheduler | ReduceLROnPlateau
# `factory(optimizer)` or `factory(optimizer, steps_per_epoch=...)`, called at fit start.
SchedulerFactory = Callable[..., Scheduler]
INTERVALS = ("epoch", "step")


class LearningRateScheduler(Callback):
    """Sets the learning rate of every param group after each optimizer step or epoch.

    Exactly one of `scheduler` and `lr_at` gives the schedule (or neither, for warmup
    alone). The schedule always steps after the optimizer: per optimizer step (so with
    gradient accumulation a step is an optimizer step, and a step the fp16 scaler skipped
    does not count) or at the end of each epoch. Its state, and every group's LR, are in
    `state_dict()` so a resumed run continues the same curve.

    Args:
        scheduler: A `torch.optim.lr_scheduler` scheduler, or a factory called at fit start
            with the optimizer given to the Trainer (the one inside Accelerate's wrapper); a
            factory with a `steps_per_epoch` parameter also gets the optimizer steps per epoch
            on this process, e.g.
            `lambda opt, steps_per_epoch: OneCycleLR(opt, 1e-3, epochs=5, steps_per_epoch=steps_per_epoch)`.
        interval: "step" (OneCycleLR, CyclicLR) or "epoch".
        monitor: Metric that `ReduceLROnPlateau` reads at each epoch end.
        lr_at: A plain function `(step_or_epoch, base_lr) -> lr`, called per param group
            with the group's initial LR, e.g. `lambda epoch, lr: lr * 0.1 ** (epoch // 30)`.
        warmup: Number of steps or epochs during which the LR is scaled by
            `(k + 1) / (warmup + 1)` at the k-th one, on top of whatever the schedule says.
        warmup_interval: Unit of `warmup`: "step" or "epoch"; default `interval`.

    Named as Keras names it. `LRScheduler`, its name up to 0.1.0, still works until 0.2.0
    (building one warns). Its checkpointed state keeps the key "LRScheduler", so checkpoints
    written before the rename resume.
    """

    order = Order.SCHEDULE

    def __init__(
        self,
        scheduler: Scheduler | SchedulerFactory | None = None,
        *,
        interval: str = "epoch",
        monitor: str = "val/loss",
        lr_at: Callable[[int, float], float] | None = None,
        warmup: int = 0,
        warmup_interval: str | None = None,
    ) -> None:
        for option, value in (("interval", interval), ("warmup_interval", warmup_interval or interval)):
            if value not in INTERVALS:
                raise ScheduleError(f"{option} must be 'epoch' or 'step', got {value!r}")
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise ScheduleError(f"warmup must be an int >= 0 (steps or epochs), got {warmup!r}")
        if scheduler is not None and lr_at is not None:
            raise ScheduleError("give either a scheduler or lr_at, not both; chain them in one schedule instead")
        if scheduler is None and lr_at is None and warmup == 0:
            raise ScheduleError("nothing to schedule: give a scheduler, an lr_at function or warmup > 0")
        if scheduler is not None and not isinstance(scheduler, (TorchScheduler, ReduceLROnPlateau)):
            if not callable(scheduler):
                raise ScheduleError(
                    f"scheduler must be a torch.optim.lr_scheduler scheduler or a factory `optimizer -> scheduler`, "
                    f"got {type(scheduler).__name__}"
                )
        if lr_at is not None and not callable(lr_at):
            raise ScheduleError(f"lr_at must be a function (step_or_epoch, base_lr) -> lr, got {type(lr_at).__name__}")
        if isinstance(scheduler, ReduceLROnPlateau) and interval != "epoch":
            raise ScheduleError("ReduceLROnPlateau reads a metric once per epoch; use interval='epoch'")
        self.scheduler: Scheduler | None = scheduler if _is_scheduler(scheduler) else None
        self._factory: SchedulerFactory | None = (
            scheduler if scheduler is not None and not _is_scheduler(scheduler) else None
        )
        self.interval = interval
        self.monitor = monitor
        self.lr_at = lr_at
        self.warmup = warmup
        self.warmup_interval = warmup_interval or interval
        self._optimizer: Optimizer | None = None
        self._ticks = 0  # lr_at: steps or epochs done
        self._base_lrs: list[float] = []  # lr_at: each group's initial LR
        self._warmup_done = 0
        self._scheduled: list[float] | None = None  # the schedule's LRs, before the warmup factor
        self._pending: dict[str, Any] | None = None

    @property
    def state_key(self) -> str:
        """`LRScheduler`, the class's name up to 0.1.0, so older checkpoints restore; a subclass: its own name."""
        return "LRScheduler" if type(self) is LearningRateScheduler else type(self).__qualname__

    # ----------------------------------------------------------------------------- events
    def on_fit_start(self, trainer: Trainer) -> None:
        optimizer = self._optimizer = trainer.optimizer
        self._ticks, self._warmup_done, self._scheduled = 0, 0, None  # a new fit, unless resumed below
        if self._factory is not None:
            self.scheduler = self._build(trainer)
        if self.scheduler is not None:
            own = getattr(self.scheduler, "optimizer", optimizer)
            if own.param_groups is not optimizer.param_groups:
                raise ScheduleError("the scheduler was built for another optimizer than the trainer's")
        if self.is_plateau and self.monitor.startswith("val/") and trainer.val_loader is None:
            raise ScheduleError(
                f"ReduceLROnPlateau monitors {self.monitor!r} but fit() got no val_loader; pass one, or "
                "monitor 'train/epoch_loss'"
            )
        if self.lr_at is not None:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
            self._base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
            self._set_lrs([self._call_lr_at(0, base) for base in self._base_lrs])
        if self._pending is not None:
            self._restore(self._pending)
            self._pending = None
        elif self.warmup:
            self._scheduled = self._lrs()
            self._apply_warmup()
        self._check_length(trainer)

    def on_train_batch_end(self, trainer: Trainer) -> None:
        # A step the fp16 scaler skipped does not count, fused optimizers included (`state.step_skipped`).
        if not trainer.state.optimizer_stepped or trainer.state.step_skipped:
            return
        if self.interval == "step":
            self._step_schedule(trainer)
        if self.warmup_interval == "step":
            self._step_warmup()

    def on_epoch_end(self, trainer: Trainer) -> None:
        if self.interval == "epoch":
            self._step_schedule(trainer)
        if self.warmup_interval == "epoch":
            self._step_warmup()

    # ----------------------------------------------------------------------------- stepping
    @property
    def is_plateau(self) -> bool:
        """True when the schedule is a `ReduceLROnPlateau` (it reads `monitor`)."""
        return isinstance(self.scheduler, ReduceLROnPlateau)

    def _step_schedule(self, trainer: Trainer) -> None:
        if self.scheduler is None and self.lr_at is None:
            return
        if self._scheduled is not None:
            self._set_lrs(self._scheduled)  # the schedule continues from its own values
        if isinstance(self.scheduler, ReduceLROnPlateau):
            metrics = trainer.state.metrics
            if self.monitor not in metrics:
                raise ScheduleError(
                    f"ReduceLROnPlateau monitors {self.monitor!r}, which is not among the metrics: "
                    f"{', '.join(sorted(metrics)) or 'none'}; set monitor= to one of those"
                )
            self.scheduler.step(metrics[self.monitor])
        elif self.scheduler is not None:
            self.scheduler.step()
        else:
            self._ticks += 1
            self._set_lrs([self._call_lr_at(self._ticks, base) for base in self._base_lrs])
        if self._scheduled is not None:
            self._scheduled = self._lrs()
            self._apply_warmup()

    def _step_warmup(self) -> None:
        if self._scheduled is None:
            return
        self._warmup_done += 1
        self._apply_warmup()
        if self._warmup_done >= self.warmup:
            self._scheduled = None

    def _apply_warmup(self) -> None:
        assert self._scheduled is not None
        factor = min(1.0, (self._warmup_done + 1) / (self.warmup + 1))
        self._set_lrs([lr * factor for lr in self._scheduled])

    def scale_group(self, index: int, ratio: float) -> None:
        """Multiply this schedule's values for param group `index` by `ratio`.

        For `FreezeUnfreeze`, which has already scaled the group's own LR keys: every LR
        the schedule gives that group from now on is `ratio` times what it would have been.
        """
        for scheduler in nested_schedulers(self.scheduler):
            for values in scheduler_lr_lists(scheduler):
                if index < len(values):
                    values[index] *= ratio
        for lrs in (self._scheduled, self._base_lrs):
            if lrs is not None and index < len(lrs):
                lrs[index] *= ratio

    # ----------------------------------------------------------------------------- helpers
    def _check_length(self, trainer: Trainer) -> None:
        """Fail at fit start, not mid-run, when a fixed-length schedule cannot cover the fit."""
        for scheduler in nested_schedulers(self.scheduler):
            ends = one_cycle_phase_ends(scheduler)
            # OneCycleLR divides by the length of the phase a step falls in: the first phase is
            # used from step 0 when it ends at or after 0, the last one after the one before it.
            if ends and (ends[0] == 0 or (len(ends) > 1 and ends[-1] == ends[-2])):
                raise ScheduleError(
                    f"{type(scheduler).__name__} over {getattr(scheduler, 'total_steps', '?')} optimizer steps has an "
                    "empty phase (PyTorch would divide by zero in it); change pct_start or the number of steps"
                )
        total = getattr(self.scheduler, "total_steps", None)
        batches = trainer.state.batches_per_epoch
        if self.interval != "step" or not isinstance(total, int) or batches is None:
            return
        steps = math.ceil(batches / trainer.accelerator.gradient_accumulation_steps)
        needed = trainer.state.max_epochs * steps
        if needed > total:
            raise ScheduleError(
                f"{type(self.scheduler).__name__} was built for {total} optimizer steps, but fit() runs {needed} "
                f"({trainer.state.max_epochs} epochs of {steps}): it would fail at step {total + 1}. Build it with "
                f"epochs={trainer.state.max_epochs} (a factory with a steps_per_epoch parameter gets {steps}). A "
                "resumed run keeps the schedule it was saved with, whose length the epochs, batch size, gradient "
                "accumulation and dataset size fixed: resume with those it was started with, or start a new run "
                "from its weights (callbacks-kit train --init-from)"
            )

    def _build(self, trainer: Trainer) -> Scheduler:
        assert self._factory is not None
        try:
            wants_steps = "steps_per_epoch" in inspect.signature(self._factory).parameters
        except (TypeError, ValueError):
            wants_steps = False
        # The user's optimizer itself, not Accelerate's wrapper: the scheduler then counts the
        # steps the loop makes on it (`OptimizerCalls`), and the LRs it sets are the same.
        optimizer = unwrapped_optimizer(trainer.optimizer)
        if wants_steps:
            batches = trainer.state.batches_per_epoch
            if batches is None:
                raise ScheduleError("the factory asks for steps_per_epoch, but train_loader has no len()")
            # Accelerate ends every epoch with an optimizer step, even a short accumulation.
            steps = math.ceil(batches / trainer.accelerator.gradient_accumulation_steps)
            build = functools.partial(self._factory, optimizer, steps_per_epoch=steps)
        else:
            build = functools.partial(self._factory, optimizer)
        try:
            built = build()
        except ZeroDivisionError as exc:  # OneCycleLR steps once when built
            raise ScheduleError(
                "the scheduler divided by zero when it was built: a OneCycleLR with an empty phase "
                "(pct_start * total_steps == 1); change pct_start or the number of steps"
            ) from exc
        if not _is_scheduler(built):
            raise ScheduleError(f"the scheduler factory returned a {type(built).__name__}, not an LR scheduler")
        if isinstance(built, ReduceLROnPlateau) and self.interval != "epoch":
            raise ScheduleError("ReduceLROnPlateau reads a metric once per epoch; use interval='epoch'")
        return built

    def _call_lr_at(self, tick: int, base: float) -> float:
        assert self.lr_at is not None
        lr = self.lr_at(tick, base)
        if isinstance(lr, torch.Tensor) and lr.numel() == 1:
            lr = lr.item()
        if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not math.isfinite(lr) or lr < 0:
            raise ScheduleError(
                f"lr_at({tick}, {base}) returned {lr!r}; it must return the learning rate as a finite number >= 0"
            )
        return float(lr)

    def _lrs(self) -> list[float]:
        assert self._optimizer is not None
        return [group["lr"] for group in self._optimizer.param_groups]

    def _set_lrs(self, lrs: list[float]) -> None:
        assert self._optimizer is not None
        for group, lr in zip(self._optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr

    # ----------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        if self._optimizer is None:  # not fitted yet: whatever was loaded
            return dict(self._pending or {})
        return {
            "scheduler": tag_json(self.scheduler.state_dict()) if self.scheduler is not None else None,
            # Every group setting but params: a factory rebuilt at resume resets some of them
            # (OneCycleLR's lr, max_lr, momentum...), and the checkpointed optimizer had them right.
            "groups": [tag_json({k: v for k, v in g.items() if k != "params"}) for g in self._optimizer.param_groups],
            "ticks": self._ticks,
            "base_lrs": list(self._base_lrs),
            "warmup_done": self._warmup_done,
            "scheduled": None if self._scheduled is None else list(self._scheduled),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self._optimizer is None:
            self._pending = dict(state)  # applied at fit start, once the scheduler exists
        else:
            self._restore(state)

    def _restore(self, state: dict[str, Any]) -> None:
        assert self._optimizer is not None
        if state.get("scheduler") is not None and self.scheduler is not None:
            self.scheduler.load_state_dict(untag_json(state["scheduler"]))
        groups = state.get("groups") or []
        if len(groups) != len(self._optimizer.param_groups):
            raise ScheduleError(
                f"the saved schedule has {len(groups)} param groups and the optimizer has "
                f"{len(self._optimizer.param_groups)}; resume with the optimizer the run was saved with"
            )
        for group, saved in zip(self._optimizer.param_groups, groups, strict=True):
            for key, value in untag_json(saved).items():
                current = group.get(key)
                if isinstance(value, torch.Tensor) and isinstance(current, torch.Tensor):
                    value = value.to(current.device)  # a tensor LR (fused, capturable) stays where it was
                group[key] = value
        self._ticks = int(state.get("ticks", 0))
        self._base_lrs = list(state.get("base_lrs") or self._base_lrs)
        self._warmup_done = int(state.get("warmup_done", 0))
        scheduled = state.get("scheduled")
        self._scheduled = None if scheduled is None else list(scheduled)


class LRScheduler(LearningRateScheduler):
    """Deprecated: `LearningRateScheduler` under its name up to 0.1.0; removed in 0.2.0.

    Building one warns (`DeprecationWarning`) and gives a `LearningRateScheduler` in all but
    the name: the same arguments, schedule and checkpointed state (key "LRScheduler"), and
    `trainer.callbacks.find(LearningRateScheduler)` finds it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        warnings.warn(
            "LRScheduler was renamed LearningRateScheduler (as Keras names it); the name LRScheduler is removed "
            "in 0.2.0",
            DeprecationWarning,
            stacklevel=2,
        )
        super().__init__(*args, **kwargs)


def _is_scheduler(obj: object) -> TypeIs[Scheduler]:
    return isinstance(obj, (TorchScheduler, ReduceLROnPlateau))
