"""What a checkpoint folder holds, and how the save side builds its files from a trainer.

    model.safetensors   the model's weights (unwrapped), written by the main process
    state.json          position, TrainState, optimizer, scaler and callback states (no tensors)
    state.safetensors   the tensors those states refer to (optimizer moments...)
    rng-rank<r>.json    RNG states, sampler seed and loss sums of process r, one per process
    meta.json           format, world size, position, size and sha256 of every file (last)

Everything is read through the trainer's public state (`state`, `optimizer`, `accelerator`,
`loss_sums`, `callbacks.stateful()`). Writing the files safely is `checkpoint.store`;
reading them back, `checkpoint.restore`. The encoding of states is `checkpoint.codec`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import safetensors.torch

from callbacks_kit.checkpoint.codec import capture_rng_states, host_tensors, split_tensors

if TYPE_CHECKING:
    from callbacks_kit.trainer import Trainer

FORMAT, VERSION = "callbacks_kit.checkpoint", 1
META, MODEL, STATE_JSON, STATE_TENSORS = "meta.json", "model.safetensors", "state.json", "state.safetensors"


@dataclass(frozen=True)
class Position:
    """Where training resumes: `batch` batches of `epoch` are done (0 at an epoch boundary)."""

    epoch: int
    batch: int


def rank_file(rank: int) -> str:
    """Name of the RNG-state file of process `rank`."""
    return f"rng-rank{rank}.json"


def _train_sampler_seed(trainer: Trainer) -> int | None:
    loader = trainer.train_loader
    sampler = loader.get_sampler() if hasattr(loader, "get_sampler") else None
    return getattr(sampler, "initial_seed", None)


def rank_files(trainer: Trainer, position: Position) -> dict[str, bytes]:
    """The file of the calling process: RNG states, sampler seed, running train-loss sums."""
    doc = {"rank": trainer.accelerator.process_index, "rng": capture_rng_states()}
    doc["sampler_seed"] = _train_sampler_seed(trainer)
    sums = trainer.loss_sums if position.batch else None  # only a mid-epoch resume continues them
    doc["loss_sums"] = sums.to_list() if sums is not None else None
    return {rank_file(trainer.accelerator.process_index): json.dumps(doc).encode()}


def main_files(trainer: Trainer, position: Position, should_stop: bool, tag: dict[str, str]) -> dict[str, bytes]:
    """The model's weights; the trainer's, optimizer's, scaler's and callbacks' states.

    The saved `TrainState` holds `position` (not the live batch index) and no transient flags.
    """
    state, accelerator = trainer.state, trainer.accelerator
    weights = host_tensors(trainer.unwrapped_model.state_dict())
    tag = {**tag, "epoch": str(position.epoch), "batch": str(position.batch), "global_step": str(state.global_step)}
    tensors: dict[str, Any] = {}
    trainer_state = {
        **state.state_dict(),
        "epoch": position.epoch,
        "batch_idx": position.batch,
        "should_stop": should_stop,
        "stage": "idle",
        "is_log_step": False,
        "optimizer_stepped": False,
        "step_skipped": False,
    }
    doc = {
        "trainer": trainer_state,
        "accelerator_step": accelerator.step,
        "global_batch_size": getattr(trainer.train_loader, "total_batch_size", None),
        "optimizer": split_tensors(trainer.optimizer.state_dict(), tensors, "optimizer"),
        "scaler": split_tensors(accelerator.scaler.state_dict(), tensors, "scaler") if accelerator.scaler else None,
        "callbacks": {
            cb.state_key: split_tensors(cb.state_dict(), tensors, f"callbacks.{cb.state_key}")
            for cb in trainer.callbacks.stateful()
        },
    }
    return {
        MODEL: safetensors.torch.save(weights, metadata={"format": "pt", **tag}),
        STATE_JSON: json.dumps(doc).encode(),
        STATE_TENSORS: safetensors.torch.save(host_tensors(tensors)),
    }
