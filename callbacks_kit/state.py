"""The trainer's shared, explicit state: progress, loss sums, the place in the samples, where a resume goes on."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch


@dataclass
class TrainState:
    """Progress of a `fit` run, shared by the trainer and every callback.

    Attributes:
        epoch: Index of the current epoch, counted from 0.
        max_epochs: Number of epochs `fit` was asked to run.
        global_step: Optimizer steps taken so far (not batches).
        batch_idx: Index of the current batch within the epoch.
        batches_per_epoch: Length of the training loader, when it has one.
        samples_seen: Training samples seen by this process in the whole run.
        metrics: The latest logged values by tag (`train/loss`, `val/loss`, `val/<metric>`...).
        should_stop: Set by anyone to end training at the next batch or epoch boundary.
        is_log_step: True during `on_train_batch_end` when the trainer has just refreshed
            `metrics` from the device (every `log_every_n_steps` optimizer steps).
        optimizer_stepped: True during `on_train_batch_end` when this batch ended with an
            optimizer step (False on accumulation batches).
        step_skipped: True during `on_train_batch_end` when this batch's optimizer step was
            skipped by the fp16 loss scaler (non-finite gradients); always False without fp16.
        stage: "train", "validate" or "idle".
        validation_prefix: The tag prefix of the validation in progress ("val";
            "val_ema" for the EMA weights, "test" for `evaluate(..., prefix="test")`).
    """

    epoch: int = 0
    max_epochs: int = 0
    global_step: int = 0
    batch_idx: int = 0
    batches_per_epoch: int | None = None
    samples_seen: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    should_stop: bool = False
    is_log_step: bool = False
    optimizer_stepped: bool = False
    step_skipped: bool = False
    stage: str = "idle"
    validation_prefix: str = "val"

    def state_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy, for checkpoints."""
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from `state_dict()`; unknown keys are an error, missing keys keep defaults."""
        known = set(self.__dataclass_fields__)
        unknown = set(state) - known
        if unknown:
            raise KeyError(f"unknown TrainState keys {sorted(unknown)}; expected a subset of {sorted(known)}")
        for key, value in state.items():
            setattr(self, key, dict(value) if key == "metrics" else value)


@dataclass
class LossSums:
    """The epoch's running training loss, kept on the device so the loop never waits for it.

    A batch only appends its detached loss to `pending`; `fold` adds those into `epoch`
    one by one, in batch order, when a sum is needed (a log step, a checkpoint, the epoch's
    end). The sum is then the same, bit for bit, whenever it is folded, and the loop pays
    no device operation per batch for it. The interval's mean loss is the difference
    between `epoch` and `logged` (the sum at the last log) over `interval_batches`. A
    mid-epoch checkpoint saves these (`to_list`), so a resumed run logs the same `train/*`
    values as an uninterrupted one.

    Attributes:
        epoch: Sum of the folded batch losses of this epoch (a device scalar).
        logged: Value of `epoch` at the last log step.
        epoch_batches: Batches added this epoch, folded or not.
        interval_batches: Batches added since the last log step.
        pending: Losses added and not folded yet (at most a logging interval's worth).
    """

    epoch: torch.Tensor
    logged: torch.Tensor
    epoch_batches: int = 0
    interval_batches: int = 0
    pending: list[torch.Tensor] = field(default_factory=list)

    @classmethod
    def zeros(cls, device: torch.device) -> LossSums:
        """Sums at the start of an epoch."""
        return cls(torch.zeros((), device=device), torch.zeros((), device=device))

    def add(self, loss: torch.Tensor) -> None:
        """Add one batch's (detached) loss."""
        self.pending.append(loss)
        self.epoch_batches += 1
        self.interval_batches += 1

    def fold(self) -> torch.Tensor:
        """Add the pending losses into `epoch`, in order, and return it (a device scalar)."""
        for loss in self.pending:
            self.epoch += loss
        self.pending.clear()
        return self.epoch

    def interval_mean(self) -> torch.Tensor:
        """Mean loss of the batches since the last log step (a device scalar)."""
        return (self.fold() - self.logged) / self.interval_batches

    def mark_logged(self) -> None:
        """Start a new logging interval."""
        self.logged = self.fold().clone()
        self.interval_batches = 0

    def to_list(self) -> list[float | int]:
        """`[epoch, logged, epoch_batches, interval_batches]` for a checkpoint (reads the device)."""
        return [float(self.fold()), float(self.logged), self.epoch_batches, self.interval_batches]

    def resume_from(self, saved: list[float | int]) -> None:
        """Continue from a checkpoint's `to_list()`, adding to these (fresh, zero) sums."""
        self.epoch += float(saved[0])
        self.logged += float(saved[1])
        self.epoch_batches, self.interval_batches = int(saved[2]), int(saved[3])


@dataclass
class EpochSamples:
    """Where the loop is in the current epoch's sample order, counted in samples over all processes.

    The loop moves `done` on after every batch; `ModelCheckpoint` records it with each
    position, so a run resumed with another number of processes or batch size trains
    exactly the samples of the epoch that are left (`checkpoint/remaining.py`).

    Attributes:
        done: Samples of the epoch's order trained up to the latest batch; None when the
            loader does not say how many samples a step takes (not a prepared DataLoader).
        end: Where the epoch's samples end in its order (the dataset's length, less what a
            `drop_last` loader drops); None when unknown.
        dataset: The dataset's length, None when it has none.
    """

    done: int | None = 0
    end: int | None = None
    dataset: int | None = None


@dataclass
class ResumePoint:
    """Where a resumed run continues, produced by `checkpoint.restore` and consumed by the loop once.

    Attributes:
        batches_to_skip: Batches of the current epoch counted as done (0 at an epoch boundary):
            the loop's batch index starts there. Without `remaining`, the loader's first
            `batches_to_skip` batches are skipped.
        restore_rng: Puts back the saved RNG states. The loop calls it after the resumed
            epoch's DataLoader iterator is created (creating one draws a base seed from the
            global RNG), or before the epoch starts when resuming at an epoch boundary.
        loss_sums: The running loss sums of a mid-epoch checkpoint (`LossSums.to_list()`),
            or None.
        remaining: This process's batches (dataset indices) of the samples the epoch has left,
            when the run resumes with another layout than it was saved with; None: the
            loader's own batches.
        round_samples: Samples each batch of `remaining` trains over all processes.
        samples: Where the resumed epoch starts in its sample order (`EpochSamples`).
    """

    batches_to_skip: int
    restore_rng: Callable[[], None]
    loss_sums: list[float | int] | None = None
    remaining: list[list[int]] | None = None
    round_samples: list[int] = field(default_factory=list)
    samples: EpochSamples = field(default_factory=EpochSamples)
