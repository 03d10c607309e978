"""The checkpoint format: the names of the folders and files, and the version they are at.

    <checkpoint folder>/
      last.json               {"checkpoint": "<name>"}: the newest committed folder (`POINTER`)
      best.safetensors        the best model's weights, for inference (`BEST_WEIGHTS`)
      epoch=0003-step=00000024/                 a checkpoint at an epoch end (`folder_name`)
      epoch=0004-batch=0003-step=00000027/      a checkpoint 3 batches into epoch 4
        model.safetensors   the model's weights (unwrapped), written by the main process
        state.json          position, TrainState, optimizer, scaler and callback states (no tensors)
        state.safetensors   the tensors those states refer to (optimizer moments...)
        rng-rank<r>.json    RNG states, sampler seed and loss sums of process r, one per process
        meta.json           format, version, world size, position, size and CRC-32 of every file (last)
      .tmp-*  .trash-*        a save or prune in progress, or the leftovers of a killed one

Every module of `callbacks_kit.checkpoint` and every reader of checkpoint folders (deploy,
the CLI) takes these names from here. `VERSION` grows when the files change in a way an
older reader cannot read; `restore` refuses a newer version than its own. Version 2 records
each file's CRC-32 where version 1 recorded its sha256 (`digest`); both are read.
"""

from __future__ import annotations

from dataclasses import dataclass

FORMAT, VERSION = "callbacks_kit.checkpoint", 2
META, MODEL, STATE_JSON, STATE_TENSORS = "meta.json", "model.safetensors", "state.json", "state.safetensors"
POINTER, BEST_WEIGHTS = "last.json", "best.safetensors"
TMP_PREFIX, TRASH_PREFIX = ".tmp-", ".trash-"


@dataclass(frozen=True)
class Position:
    """Where training resumes: `batch` batches of `epoch` are done (0 at an epoch boundary).

    `samples` counts the samples of the epoch's order trained by then, over all processes
    (`state.EpochSamples.done`); None when unknown.
    """

    epoch: int
    batch: int
    samples: int | None = None


def rank_file(rank: int) -> str:
    """Name of the RNG-state file of process `rank`."""
    return f"rng-rank{rank}.json"


def folder_name(position: Position, global_step: int) -> str:
    """The folder a checkpoint at `position` asks for: epochs done at an epoch end, else the epoch in progress."""
    if position.batch:
        return f"epoch={position.epoch + 1:04d}-batch={position.batch:04d}-step={global_step:08d}"
    return f"epoch={position.epoch:04d}-step={global_step:08d}"


def numbered_name(name: str, number: int) -> str:
    """The name a checkpoint gets when `name` is taken (a second run into the same folder): `<name>-v<number>`."""
    return f"{name}-v{number}"
