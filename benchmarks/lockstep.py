"""Timing a framework's steps against a hand-written loop that runs in turn with it (section 1)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from torch.utils.data import Sampler

from benchmarks.common import Batch, synced_time
from benchmarks.workloads import Case, HandLoop


class Lockstep:
    """Pre-made batches that run one step of the hand-written loop before handing out each.

    Whatever consumes the batches (the Trainer, Lightning...) and the hand-written loop
    take turns step by step, so a busy machine slows both alike. The framework's time for
    a step runs from handing out a batch to the next request, less the hand step run in
    between; a loader that fetches one batch ahead shifts the steps by one, not their
    count. The first `skip` steps of both warm up and are not counted, nor are the last `tail`
    (where a run may do what must stay out of the timed steps). On a CPU the clock
    is the process's CPU time; on a GPU it is wall time with every step synchronised, so
    host overhead cannot hide behind queued device work.
    """

    def __init__(self, case: Case, skip: int, tail: int = 0) -> None:
        self.case, self.skip, self.tail = case, skip, tail
        self.framework_s = self.hand_s = 0.0

    def __len__(self) -> int:
        return len(self.case.batches)

    def __iter__(self) -> Iterator[Batch]:
        for i in self.indices():
            yield self.case.batches[i]

    def indices(self) -> Iterator[int]:
        """Batch indices; one timed hand step runs before each is handed out."""
        hand = HandLoop(self.case)  # built here: after the framework has set up its Accelerator
        self.framework_s = self.hand_s = 0.0
        handed_out = 0.0
        last = len(self.case.batches) - 1 - self.tail
        for i, (inputs, targets) in enumerate(self.case.batches):
            start = self.now()
            hand.step(inputs, targets)
            end = self.now()
            if self.skip < i <= last:
                self.framework_s += start - handed_out
                self.hand_s += end - start
            handed_out = end
            yield i

    def per_step(self) -> tuple[float, float]:
        """Seconds per step of the framework and of the hand-written loop beside it."""
        if not self.hand_s > 0:
            raise RuntimeError("the loop did not reach the last batch")
        steps = len(self.case.batches) - 1 - self.skip - self.tail
        return self.framework_s / steps, self.hand_s / steps

    def now(self) -> float:
        """The clock: synchronised wall time on a GPU, the process's CPU time on a CPU."""
        if self.case.device.type == "cuda":
            return synced_time(self.case.device)
        # On a CPU, the process's CPU time: the work done, without the waits for other
        # processes that make wall time on a shared machine mostly noise.
        return time.process_time()


class LockstepSampler(Sampler[int]):
    """The lockstep as a sampler, for a framework that only takes a dataset (pytorch-accelerated)."""

    def __init__(self, lockstep: Lockstep) -> None:
        self.lockstep = lockstep

    def __len__(self) -> int:
        return len(self.lockstep)

    def __iter__(self) -> Iterator[int]:
        return self.lockstep.indices()


# Trains a fresh copy of the case's model for one epoch on the lockstep's batches.
Runner = Callable[[Case, Lockstep], None]
