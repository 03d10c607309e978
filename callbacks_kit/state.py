"""The trainer's shared, explicit state: what callbacks read and what a checkpoint saves."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


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
        stage: "train", "validate" or "idle".
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
    stage: str = "idle"

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
