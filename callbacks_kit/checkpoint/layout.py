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

import torch

from callbacks_kit.checkpoint.codec import capture_rng_states, host_tensors, safetensors_parts, split_tensors
from callbacks_kit.checkpoint.snapshot import HostSnapshot

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


@dataclass(frozen=True)
class MainState:
    """What the main process saves, collected on the loop thread; `files()` encodes it anywhere.

    `weights` and `tensors` are host tensors that training no longer touches (a snapshot,
    or the live CPU tensors of a synchronous save); `doc` is state.json, already encoded.
    """

    weights: dict[str, torch.Tensor]
    tensors: dict[str, torch.Tensor]
    doc: bytes
    tag: dict[str, str]

    def files(self) -> dict[str, bytes | list[Any]]:
        """The files' contents: bytes, or the buffers of a safetensors file (`codec.safetensors_parts`)."""
        return {
            MODEL: safetensors_parts(self.weights, {"format": "pt", **self.tag}),
            STATE_JSON: self.doc,
            STATE_TENSORS: safetensors_parts(self.tensors),
        }


def main_state(
    trainer: Trainer, position: Position, should_stop: bool, tag: dict[str, str], snapshot: HostSnapshot | None = None
) -> MainState:
    """The model's weights; the trainer's, optimizer's, scaler's and callbacks' states.

    The saved `TrainState` holds `position` (not the live batch index) and no transient flags.
    With a `snapshot`, every tensor is copied into its host buffers (an asynchronous save).
    """
    state, accelerator = trainer.state, trainer.accelerator
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
    weights = trainer.unwrapped_model.state_dict()
    if snapshot is None:
        host_weights, host_state = host_tensors(weights), host_tensors(tensors)
    else:
        host_weights, host_state = snapshot.copy(weights, "model"), snapshot.copy(tensors, "state")
        snapshot.ready()
    return MainState(host_weights, host_state, json.dumps(doc).encode(), tag)
