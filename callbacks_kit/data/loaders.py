"""DataLoaders: worker and pin-memory defaults for this machine, and `make_loader`."""

from __future__ import annotations

import os

import torch
from torch.utils.data import DataLoader, Dataset

from callbacks_kit.cpu import cpu_forced


def default_workers() -> int:
    """Data-loading workers per process, for the cores this process may use (a container's or taskset's limit).

    The cores are shared by the processes launched on this machine (`LOCAL_WORLD_SIZE`, set
    by torchrun and `accelerate launch`): each gets its share. Of a share, half on a CPU-only
    machine (the other half runs the model); all but one with a GPU, which runs the model
    while the main process only feeds it. At most 8: more rarely help and each holds its own
    copy of the dataset object.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    share = max(1, cores // local)
    return min(8, share - 1 if torch.cuda.is_available() else share // 2)


def pin_by_default() -> bool:
    """Whether `make_loader` pins memory by default: a GPU is there and `ACCELERATE_USE_CPU` does not force the CPU."""
    return torch.cuda.is_available() and not cpu_forced()


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    workers: int,
    pin_memory: bool | None = None,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader with persistent workers (no restart each epoch) and pinned memory on a GPU.

    Args:
        dataset: The samples.
        batch_size: Samples per batch (per process once Accelerate shards the loader).
        shuffle: Reshuffle every epoch (training).
        workers: Worker processes; 0 loads in the main process.
        pin_memory: Page-locked batches, copied to the GPU faster and without blocking; None
            pins them when CUDA is available and the CPU is not forced (`ACCELERATE_USE_CPU`).
            Pass False when training with `cpu=True`.
        drop_last: Drop the last, smaller batch (training: a batch of one sample fails BatchNorm).
    """
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        pin_memory=pin_by_default() if pin_memory is None else pin_memory,
        persistent_workers=workers > 0,
        drop_last=drop_last,
    )
