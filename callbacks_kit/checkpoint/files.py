"""The files of one save, encoded from plain state: the main process's three, and each process's own.

The caller gathers the state (`callbacks_kit.callbacks.checkpoint_state` does it from a
trainer's public state) and hands it over as dicts of tensors and JSON values; nothing here
knows where they came from. The names of the files are `checkpoint.format`'s, the encoding
of states `checkpoint.codec`'s; writing them safely is `checkpoint.store`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from callbacks_kit.checkpoint.codec import host_tensors, safetensors_parts, split_tensors
from callbacks_kit.checkpoint.format import MODEL, STATE_JSON, STATE_TENSORS, Position, rank_file
from callbacks_kit.checkpoint.snapshot import HostSnapshot


def rank_files(
    rank: int, rng: dict[str, Any], sampler_seed: int | None, loss_sums: list[Any] | None
) -> dict[str, bytes]:
    """The file of process `rank`: its RNG states, the sampler's seed, the running train-loss sums (mid-epoch only)."""
    doc = {"rank": rank, "rng": rng, "sampler_seed": sampler_seed, "loss_sums": loss_sums}
    return {rank_file(rank): json.dumps(doc).encode()}


@dataclass(frozen=True)
class MainState:
    """What the main process saves, as plain data: live tensors and JSON values, not yet copied.

    `trainer` is the saved `TrainState`'s dict; `callbacks` maps each stateful callback's
    `state_key` to its `state_dict()`, in the order they are saved; `epoch_samples` is the
    place in the epoch's sample order (`state.EpochSamples` as a dict), None when unknown.
    """

    weights: Mapping[str, torch.Tensor]
    trainer: dict[str, Any]
    accelerator_step: int
    global_batch_size: int | None
    optimizer: dict[str, Any]
    scaler: dict[str, Any] | None
    callbacks: dict[str, dict[str, Any]]
    epoch_samples: dict[str, int | None] | None = None


@dataclass(frozen=True)
class MainFiles:
    """The main process's files, ready to be written on any thread; `files()` encodes them.

    `weights` and `tensors` are host tensors that training no longer touches (a snapshot,
    or the live CPU tensors of a synchronous save); `doc` is state.json's content, JSON
    values in containers of its own (`split_tensors` and `TrainState.state_dict` build new
    ones), so it is encoded by `files()`, on the background thread of an asynchronous save;
    `tag` is the header of model.safetensors.
    """

    weights: dict[str, torch.Tensor]
    tensors: dict[str, torch.Tensor]
    doc: dict[str, Any]
    tag: dict[str, str]

    def files(self) -> dict[str, bytes | list[bytes | memoryview]]:
        """The files' contents: bytes, or the buffers of a safetensors file (`codec.safetensors_parts`)."""
        return {
            MODEL: safetensors_parts(self.weights, {"format": "pt", **self.tag}),
            STATE_JSON: json.dumps(self.doc).encode(),
            STATE_TENSORS: safetensors_parts(self.tensors),
        }


def main_files(
    state: MainState,
    position: Position,
    global_step: int,
    metadata: Mapping[str, str] | None = None,
    snapshot: HostSnapshot | None = None,
) -> MainFiles:
    """Encode `state` for the checkpoint at `position`: tensors split out of the states, copied to the host.

    `metadata` goes into the header of model.safetensors, followed by the position. With a
    `snapshot`, every tensor is copied into its host buffers (an asynchronous save), so the
    caller may change the live ones as soon as this returns.
    """
    tag = {**(metadata or {}), "epoch": str(position.epoch), "batch": str(position.batch),
           "global_step": str(global_step)}  # fmt: skip
    tensors: dict[str, Any] = {}
    doc = {
        "trainer": state.trainer,
        "accelerator_step": state.accelerator_step,
        "global_batch_size": state.global_batch_size,
        "optimizer": split_tensors(state.optimizer, tensors, "optimizer"),
        "scaler": split_tensors(state.scaler, tensors, "scaler") if state.scaler is not None else None,
        "callbacks": {key: split_tensors(value, tensors, f"callbacks.{key}") for key, value in state.callbacks.items()},
        "epoch_samples": state.epoch_samples,  # added in 0.2.0; older readers ignore it
    }
    if snapshot is None:
        host_weights, host_state = host_tensors(state.weights), host_tensors(tensors)
    else:
        host_weights, host_state = snapshot.copy(state.weights, "model"), snapshot.copy(tensors, "state")
        snapshot.ready()
    return MainFiles(host_weights, host_state, doc, tag)
