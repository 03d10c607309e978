"""What a checkpoint saves of a trainer, gathered from its public state into the plain data `checkpoint/` writes.

`ModelCheckpoint` calls these on the loop thread, at the position it saves. They read only
the trainer's public state (`state`, `optimizer`, `accelerator`, `train_loader`,
`loss_sums`, `epoch_samples`, `callbacks.stateful()`, `unwrapped_model`); `callbacks_kit.checkpoint.files`
turns the result into files and `checkpoint.restore` puts it back.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from callbacks_kit.checkpoint.codec import capture_rng_states
from callbacks_kit.checkpoint.files import MainFiles, MainState, main_files, rank_files
from callbacks_kit.checkpoint.format import Position
from callbacks_kit.checkpoint.snapshot import HostSnapshot
from callbacks_kit.errors import NonFiniteError
from callbacks_kit.norms import finite_sums

if TYPE_CHECKING:
    from callbacks_kit.callbacks.monitor import Monitor
    from callbacks_kit.trainer import Trainer


def train_sampler_seed(trainer: Trainer) -> int | None:
    """The seed of the seedable sampler that shuffles the training data, if it has one."""
    loader = trainer.train_loader
    sampler = loader.get_sampler() if hasattr(loader, "get_sampler") else None
    return getattr(sampler, "initial_seed", None)


def own_files(trainer: Trainer, position: Position) -> dict[str, bytes]:
    """The file of the calling process: its RNG states, the sampler's seed, the running train-loss sums."""
    sums = trainer.loss_sums if position.batch else None  # only a mid-epoch resume continues them
    return rank_files(
        trainer.accelerator.process_index,
        capture_rng_states(),
        train_sampler_seed(trainer),
        sums.to_list() if sums is not None else None,
    )


def main_state(
    trainer: Trainer, position: Position, should_stop: bool, weights: Mapping[str, torch.Tensor] | None = None
) -> MainState:
    """The model's weights; the trainer's, optimizer's, scaler's and callbacks' states (live, not copied).

    The saved `TrainState` holds `position` (not the live batch index) and no transient flags;
    `epoch_samples` the samples of the epoch's order trained at `position`, where they end
    and the dataset's length, so another layout can resume at the same sample.
    `weights`: the unwrapped model's `state_dict()` when the caller has it already.
    """
    accelerator = trainer.accelerator
    cursor = trainer.epoch_samples
    trainer_state: dict[str, Any] = {
        **trainer.state.state_dict(),
        "epoch": position.epoch,
        "batch_idx": position.batch,
        "should_stop": should_stop,
        "stage": "idle",
        "is_log_step": False,
        "optimizer_stepped": False,
        "step_skipped": False,
    }
    return MainState(
        weights=trainer.unwrapped_model.state_dict() if weights is None else weights,
        trainer=trainer_state,
        accelerator_step=accelerator.step,
        global_batch_size=getattr(trainer.train_loader, "total_batch_size", None),
        optimizer=trainer.optimizer.state_dict(),
        scaler=accelerator.scaler.state_dict() if accelerator.scaler else None,
        callbacks={cb.state_key: cb.state_dict() for cb in trainer.callbacks.stateful()},
        epoch_samples={"done": position.samples if position.batch else 0, "end": cursor.end, "dataset": cursor.dataset},
    )


def collect_files(
    trainer: Trainer,
    position: Position,
    should_stop: bool,
    metadata: dict[str, str],
    snapshot: HostSnapshot | None,
    weights: Mapping[str, torch.Tensor] | None = None,
) -> tuple[dict[str, bytes], MainFiles | None]:
    """The calling process's files of a checkpoint at `position`, and the main files on the main process.

    With a `snapshot`, the main process's tensors are copied into its host buffers (an
    asynchronous save), so training may go on as soon as this returns. `weights`: as for `main_state`.
    """
    own = own_files(trainer, position)
    if not trainer.is_main_process:
        return own, None
    state = main_state(trainer, position, should_stop, weights)
    return own, main_files(state, position, trainer.state.global_step, metadata, snapshot)


def finite_state(
    trainer: Trainer,
    monitor: Monitor | None,
    last_name: str | None,
    score: float | None,
    state: dict[str, torch.Tensor],
) -> bool:
    """False (a warning) for a non-finite monitored score; `NonFiniteError` for non-finite weights.

    One host sync, at saves only. Every process gets the same answer (the weights are
    replicated, the metrics reduced), so all of them raise or skip together. A tensor's sum
    is finite when all its values are, and summing is one vectorized pass that allocates
    nothing (a tenth of `isfinite().all()`'s time on ResNet-18; `norms.finite_sums`); a sum
    that overflowed from finite values is told apart by checking that tensor element by element.
    """
    floats = [(k, v) for k, v in state.items() if v.is_floating_point() and v.numel()]
    bad: list[str] = []
    if floats:
        sums_finite = finite_sums([v for _, v in floats]).tolist()
        bad = [k for (k, v), ok in zip(floats, sums_finite, strict=True) if not ok and not v.isfinite().all()]
    kept = f"the last checkpoint, {last_name}, is kept" if last_name else "no checkpoint was saved"
    where = f"epoch {trainer.state.epoch + 1}, optimizer step {trainer.state.global_step}"
    if bad:
        raise NonFiniteError(
            f"ModelCheckpoint: non-finite weights in {len(bad)} tensor(s) ({', '.join(bad[:5])}) at {where}: "
            f"training diverged, so this state was not saved and {kept}. Lower the learning rate (--lr), "
            "clip gradients (max_grad_norm / --max-grad-norm) or use bf16 instead of fp16; add "
            "TerminateOnNaN to stop at the first bad step"
        )
    if score is not None and not math.isfinite(score):
        assert monitor is not None
        warnings.warn(
            f"ModelCheckpoint: {monitor.key} is {score} at {where}; this state was not saved and {kept}",
            stacklevel=2,
        )
        return False
    return True


def unsaved(position: Position | None, last_name: str | None, step: int) -> str:
    """What a failed save leaves unsaved: the training since the newest checkpoint kept (`last_name`)."""
    where = "the start"
    if position is not None:
        where = f"batch {position.batch} of epoch {position.epoch + 1}" if position.batch else (
            f"the end of epoch {position.epoch}")  # fmt: skip
    where = f"{where} (optimizer step {step})"
    if last_name is None:
        return f"Not saved: this run's training, up to {where}; a resume starts it again."
    return f"Not saved: the training after {last_name!r}, up to {where}; a resume from it repeats that."
