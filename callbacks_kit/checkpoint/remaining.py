"""The samples an interrupted epoch has left, in its shuffle order, dealt out to the processes and batches of a new run.

With the seedable sampler (docs/design.md, "Exact resume") an epoch's order is a function
of (seed, epoch) alone, the same for any number of processes, and Accelerate deals it out
in steps of `processes x batch size` samples, process r taking the r-th slice of each
step. So after any step the first `done` samples of the order are trained, whatever the
layout was, and the rest of the epoch is `order[done:end]`. `split_remaining` deals that
rest out to another layout: whole steps as Accelerate would, then the epoch's tail in one
step, shared as evenly as the processes allow (docs/scaling.md).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from accelerate.data_loader import DataLoaderShard, SeedableRandomSampler
from torch.utils.data import DataLoader, Sampler, SequentialSampler


def epoch_order(sampler: Any, epoch: int) -> list[int] | None:
    """The dataset indices in the order `sampler` gives them in `epoch`; None when that order cannot be repeated.

    Repeatable: Accelerate's `SeedableRandomSampler` (the trainer's shuffled loaders; its seed
    is restored from the checkpoint first) and a `SequentialSampler`. Any other sampler may
    draw from a generator whose state is gone.
    """
    if isinstance(sampler, SeedableRandomSampler) and not sampler.replacement:
        sampler.set_epoch(epoch)
        order = [int(i) for i in sampler]
        sampler.set_epoch(epoch)  # iterating moved it on by one
        return order
    if isinstance(sampler, SequentialSampler):
        return list(range(len(sampler)))
    return None


@dataclass(frozen=True)
class Remaining:
    """The rest of an epoch in a new layout, as one process sees it.

    Attributes:
        batches: This process's batches of dataset indices, in order; every process has as many.
        round_samples: Samples each of those batches trains over all processes together.
        left_out: Samples of the rest that no batch holds: fewer than the processes can share
            (each needs `min_share`), so they cannot train in this epoch.
    """

    batches: list[list[int]]
    round_samples: list[int]
    left_out: int = 0


def _shares(samples: int, processes: int) -> list[int]:
    """`samples` shared by `processes` as evenly as possible, the larger shares first."""
    base, extra = divmod(samples, processes)
    return [base + (1 if rank < extra else 0) for rank in range(processes)]


def split_remaining(
    indices: Sequence[int], processes: int, rank: int, batch_size: int, min_share: int = 1
) -> Remaining:
    """Deal `indices` (the samples left, in order) out to `processes`, `batch_size` samples each per step.

    Whole steps take `processes x batch_size` samples, process r the r-th slice, as
    Accelerate's sharding does. The tail goes into one more step, shared as evenly as
    possible (sizes differ by one at most). A process cannot skip a step (DDP's gradient
    all-reduce waits for every process) nor train on fewer than `min_share` samples (2 with
    BatchNorm in training: one sample has no batch statistics), so a tail too small to give
    each process that much is added to the step before it, whose batches grow by a few
    samples; with no step before it, those samples are left out (`Remaining.left_out`).
    Every other sample is in exactly one batch of one process.
    """
    step = processes * batch_size
    full, tail = divmod(len(indices), step)
    rounds = [step] * full
    left_out = 0
    if tail >= min_share * processes:
        rounds.append(tail)
    elif tail and rounds:
        rounds[-1] += tail
    else:
        left_out = tail
    batches, start = [], 0
    for size in rounds:
        shares = _shares(size, processes)
        first = start + sum(shares[:rank])
        batches.append([int(i) for i in indices[first : first + shares[rank]]])
        start += size
    return Remaining(batches, rounds, left_out)


class RemainingBatches(Sampler[list[int]]):
    """A batch sampler over the given batches of dataset indices (this process's rest of an epoch).

    `batch_size` and `num_processes` are read by Accelerate to report the loader's
    `total_batch_size`.
    """

    def __init__(self, batches: list[list[int]], batch_size: int, num_processes: int) -> None:
        self.batches = batches
        self.batch_size = batch_size
        self.num_processes = num_processes

    def __iter__(self) -> Iterator[list[int]]:
        yield from (list(batch) for batch in self.batches)

    def __len__(self) -> int:
        return len(self.batches)


# The settings of a DataLoader that a loader over other batches of the same data keeps.
LOADER_SETTINGS = ("num_workers", "collate_fn", "pin_memory", "timeout", "worker_init_fn", "multiprocessing_context",
                   "generator", "prefetch_factor", "persistent_workers", "pin_memory_device", "in_order")  # fmt: skip


def remaining_loader(prepared: DataLoaderShard, batches: RemainingBatches) -> DataLoaderShard:
    """A loader like `prepared` (same dataset, workers, collation, device) that yields `batches`.

    Built as Accelerate's own `skip_first_batches` builds its loader: a `DataLoaderShard`,
    which moves batches to the device and tells Accelerate where the data ends, so gradient
    accumulation steps at the end of it as at the end of any epoch.
    """
    accepted = inspect.signature(DataLoader.__init__).parameters
    settings = {
        name: getattr(prepared, name) for name in LOADER_SETTINGS if name in accepted and hasattr(prepared, name)
    }
    loader = DataLoaderShard(prepared.dataset, device=prepared.device, batch_sampler=batches, **settings)
    if hasattr(loader, "iteration"):  # Accelerate >= 1.1 sets the epoch it keeps here at every iteration
        loader.iteration = getattr(prepared, "iteration", 0)
    return loader
