"""What one training epoch iterates, where it starts, and the loop's side of a resume.

`Trainer._train_epoch` builds an `EpochBatches` per epoch and asks it for the batches; a
resumed epoch (`state.ResumePoint`, from `checkpoint.restore`) starts after the batches
already trained, or, resumed with another number of processes or batch size, iterates the
samples its epoch has left (`checkpoint.remaining`). It also moves `trainer.epoch_samples`
on after every batch, so each checkpoint knows how many samples of the epoch's order are
trained (docs/scaling.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from callbacks_kit.batches import len_or_none
from callbacks_kit.checkpoint.remaining import RemainingBatches, remaining_loader
from callbacks_kit.state import EpochSamples, LossSums, ResumePoint

if TYPE_CHECKING:
    from callbacks_kit.trainer import Trainer


class EpochBatches:
    """One epoch's batches and its start: all of the loader's, or what a resumed epoch has left.

    Exactness (docs/design.md, "Exact resume"): a resume at an epoch boundary puts the saved
    RNG states back when this is built, before `on_epoch_start`; a mid-epoch resume puts them
    back at the top of the first batch (`starting`), after the DataLoader iterator drew its
    base seed from the global RNG, or at the end (`finish`) when no batch was left.

    Attributes:
        start: The index of the epoch's first batch here (the batches already trained).
        resumed: True when this epoch goes on from a checkpoint saved inside it.
    """

    def __init__(self, trainer: Trainer, resume: ResumePoint | None) -> None:
        self.trainer = trainer
        self.resume = resume
        self.start = resume.batches_to_skip if resume is not None else 0
        self.resumed = resume is not None and (self.start > 0 or resume.remaining is not None)
        self._restore_rng: Callable[[], None] | None = None
        if resume is not None:
            if self.resumed:
                self._restore_rng = resume.restore_rng
            else:
                resume.restore_rng()  # resumed at an epoch boundary: the states the next epoch started from
        self._round_samples: list[int] = []
        self._step_samples: int | None = None

    def batches(self) -> Iterable[Any]:
        """The epoch's batches (called after `on_epoch_start`); sets `trainer.epoch_samples` to the epoch's start."""
        trainer, resume = self.trainer, self.resume
        loader = trainer.train_loader
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(trainer.state.epoch)  # the seedable shuffle is a function of (seed, epoch), resumed or not
        dataset = len_or_none(getattr(loader, "dataset", None))
        step = self._step_samples = getattr(loader, "total_batch_size", None)
        whole = trainer.state.batches_per_epoch
        end = dataset if dataset is None or whole is None or not step else min(dataset, whole * step)
        trainer.epoch_samples = EpochSamples(0 if step else None, end, dataset)
        if resume is None or not self.resumed:
            return loader
        trainer.epoch_samples.done = resume.samples.done
        if resume.remaining is not None:  # resumed in another layout: the samples left, dealt out anew
            trainer.epoch_samples.end = resume.samples.end
            self._round_samples = list(resume.round_samples)
            if not resume.remaining:
                return ()
            share = max(len(batch) for batch in resume.remaining)
            batches = RemainingBatches(resume.remaining, share, trainer.accelerator.num_processes)
            return remaining_loader(loader, batches)
        left = None if whole is None else whole - self.start
        # Resumed after the epoch's last batch: nothing is left (Accelerate 1.0 fails to skip them all).
        return () if left is not None and left <= 0 else trainer.accelerator.skip_first_batches(loader, self.start)

    def loss_sums(self) -> LossSums:
        """The epoch's running loss sums: zero, or those of the checkpoint it resumes from."""
        sums = LossSums.zeros(self.trainer.device)
        if self.resumed and self.resume is not None and self.resume.loss_sums:
            sums.resume_from(self.resume.loss_sums)
        return sums

    def starting(self) -> None:
        """At the top of every batch: the first one of a resumed epoch puts the saved RNG states back."""
        if self._restore_rng is not None:
            self._restore_rng()  # after the resumed iterator drew its base seed
            self._restore_rng = None

    def trained(self) -> None:
        """After every batch: the samples of the epoch's order trained so far (`trainer.epoch_samples.done`)."""
        cursor = self.trainer.epoch_samples
        if cursor.done is None:
            return
        if self._round_samples:
            cursor.done += self._round_samples.pop(0)
        elif self._step_samples:
            cursor.done += self._step_samples
            if cursor.end is not None:
                cursor.done = min(cursor.done, cursor.end)  # a last batch made up of samples from the start

    def finish(self) -> None:
        """At the epoch's end: a resumed epoch with no batch left still gets its RNG states back."""
        self.starting()
