"""Where a resumed run goes on in its epoch: the same batches, or the samples left, dealt out to another layout.

A run resumed with the layout it was saved with (processes, samples per step, batches per
epoch) skips the batches already trained and puts each process's RNG states back: it goes
on bit for bit. With another layout the place in the epoch is counted in samples
(`state.EpochSamples`, recorded with every checkpoint; derived from the batch for
checkpoints older than that record): the samples of the saved shuffle order not trained
yet are dealt out to the new processes and batches (`checkpoint.remaining`), each trained
once, and the epochs after it are whole. The LR schedule goes on by optimizer steps.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from accelerate.data_loader import DataLoaderShard
from accelerate.utils import set_seed

from callbacks_kit.batches import len_or_none
from callbacks_kit.checkpoint.codec import apply_rng_states
from callbacks_kit.checkpoint.format import rank_file
from callbacks_kit.checkpoint.remaining import Remaining, epoch_order, split_remaining
from callbacks_kit.compat import BATCH_NORMS
from callbacks_kit.errors import CheckpointError
from callbacks_kit.state import EpochSamples, ResumePoint

if TYPE_CHECKING:
    from callbacks_kit.trainer import Trainer


def saved_samples(doc: Mapping[str, Any], batch: int, step_size: int | None, batches: int | None) -> EpochSamples:
    """The place in the epoch's samples a checkpoint was saved at.

    Recorded since 0.2.0 (`epoch_samples` in state.json); for older checkpoints derived as
    Accelerate deals samples out: `batch` steps of `step_size` samples, and an epoch of
    `batches` of them. Its `dataset` is then None (unknown).
    """
    record = doc.get("epoch_samples")
    if isinstance(record, Mapping):
        return EpochSamples(record.get("done"), record.get("end"), record.get("dataset"))
    done = batch * step_size if step_size else None
    return EpochSamples(done, batches * step_size if batches and step_size else None, None)


def _remaining(trainer: Trainer, saved: EpochSamples, epoch: int) -> Remaining | str:
    """The samples the epoch has left, as this process trains them; or why they cannot be known."""
    loader, accelerator = trainer.train_loader, trainer.accelerator
    size = getattr(loader, "total_batch_size", None)
    if not isinstance(loader, DataLoaderShard) or not isinstance(size, int):
        return "the training data is not a DataLoader over a dataset with a length"
    dataset = len_or_none(loader.dataset)
    if saved.done is None or saved.end is None or dataset is None:
        return "the checkpoint or the dataset does not say how many samples the epoch has"
    if saved.dataset is not None and saved.dataset != dataset:
        return f"the dataset has {dataset} samples where the saved run had {saved.dataset}"
    order = epoch_order(loader.get_sampler(), epoch)
    if order is None:
        return f"its sampler ({type(loader.get_sampler()).__name__}) cannot give the saved shuffle order again"
    batch_norm = any(isinstance(m, BATCH_NORMS) and m.training for m in trainer.unwrapped_model.modules())
    processes = accelerator.num_processes
    rest = order[saved.done : min(saved.end, dataset)]
    return split_remaining(rest, processes, accelerator.process_index, size // processes, 2 if batch_norm else 1)


def _lr_steps(trainer: Trainer, left_now: int, left_saved: int, saved_batches: int | None) -> str:
    """How the LR schedule goes on: from the saved optimizer step, to which step this run and the saved layout end."""
    state, accumulation = trainer.state, trainer.accelerator.gradient_accumulation_steps
    later = state.max_epochs - state.epoch - 1
    if later < 0 or state.batches_per_epoch is None or saved_batches is None:
        return ""

    def steps(batches: int) -> int:  # Accelerate ends every epoch with an optimizer step
        return math.ceil(batches / accumulation)

    end = state.global_step + steps(left_now) + later * steps(state.batches_per_epoch)
    end_saved = state.global_step + steps(left_saved) + later * steps(saved_batches)
    return (
        f" The LR schedule goes on by optimizer steps from step {state.global_step}, one step per optimizer step: "
        f"this run ends at step {end}, where the saved layout would have ended at step {end_saved} (a schedule "
        "built for a number of steps keeps the length it was saved with)."
    )


def restore_position(
    trainer: Trainer, path: Path, world: int, doc: dict[str, Any], files: Mapping[str, bytes]
) -> ResumePoint:
    """Epoch, batch and step into `trainer.state`; the sampler's seed; where the loop goes on (a `ResumePoint`).

    Args:
        trainer: The trainer being restored; its loaders are prepared.
        path: The checkpoint folder (for messages).
        world: The number of processes that saved it.
        doc: Its state.json.
        files: Its files by name (the `rng-rank<r>.json` of every saving process).
    """
    accelerator, state = trainer.accelerator, trainer.state
    max_epochs, batches_per_epoch = state.max_epochs, state.batches_per_epoch
    try:
        state.load_state_dict(doc["trainer"])
    except KeyError as exc:
        raise CheckpointError(f"{path} holds a trainer state this version cannot read: {exc}") from None
    saved_batches = state.batches_per_epoch
    state.max_epochs, state.batches_per_epoch = max_epochs, batches_per_epoch
    accelerator.step = int(doc.get("accelerator_step", 0))
    batch, rank, processes = state.batch_idx, accelerator.process_index, accelerator.num_processes
    old_size, new_size = doc.get("global_batch_size"), getattr(trainer.train_loader, "total_batch_size", None)
    saved = saved_samples(doc, batch, old_size, saved_batches)
    same_layout = world == processes and old_size == new_size and saved_batches == batches_per_epoch
    own = json.loads(files[rank_file(rank)]) if rank < world else None
    seed_doc = own or json.loads(files[rank_file(0)])
    sampler = trainer.train_loader.get_sampler() if hasattr(trainer.train_loader, "get_sampler") else None
    if sampler is not None and hasattr(sampler, "initial_seed") and seed_doc.get("sampler_seed") is not None:
        sampler.initial_seed = int(seed_doc["sampler_seed"])
    if world == processes and own is not None:  # each process gets its own random streams back
        rng_doc = own

        def restore_rng() -> None:
            apply_rng_states(rng_doc["rng"])
    else:
        base = trainer.seed if trainer.seed is not None else 0
        seed = (base + 1_000_003 * (rank + 1) + state.global_step) % 2**32

        def restore_rng() -> None:
            set_seed(seed)

    sums = own.get("loss_sums") if own is not None and batch else None
    if same_layout and (not batch or saved.done in (None, batch * (old_size or 0))):  # bit for bit
        return ResumePoint(batch, restore_rng, list(sums) if sums else None, samples=saved)
    remaining = _remaining(trainer, saved, state.epoch) if batch else None
    if isinstance(remaining, Remaining):  # sample-exact
        rounds = len(remaining.batches)
        state.batch_idx = max(0, (batches_per_epoch or rounds) - rounds)  # numbered as the epoch's last batches
        carried = list(sums) if sums and world == processes else None
        resume = ResumePoint(state.batch_idx, restore_rng, carried, remaining.batches, remaining.round_samples, saved)
        left_now = rounds
        where = (
            f": the {sum(remaining.round_samples)} samples of epoch {state.epoch + 1}'s shuffle order not trained "
            f"yet ({saved.done} of {saved.end} were) are dealt out to {rounds} batch(es) per process, each trained once"
        )
        if remaining.left_out:
            where += f"; {remaining.left_out} are left out, too few to share among {processes} processes"
    else:
        if batch and old_size and new_size:  # the same samples, counted in whole batches of the new size
            state.batch_idx = math.ceil((saved.done or batch * old_size) / new_size)
        if batches_per_epoch is not None:
            state.batch_idx = min(state.batch_idx, batches_per_epoch)
        resume = ResumePoint(state.batch_idx, restore_rng, samples=saved)
        left_now = (batches_per_epoch or 0) - state.batch_idx
        where = f", in whole batches because {remaining}: samples may be skipped or repeated" if remaining else ""
    if same_layout and isinstance(remaining, Remaining):
        return resume  # inside an epoch resumed in another layout, resumed again in the same one: bit for bit
    place = (
        f"the position in the epoch is converted by samples (batch {state.batch_idx}){where}"
        if batch
        else f"the run goes on at the start of epoch {state.epoch + 1}"
    )
    trainer.print(
        f"resume: the checkpoint was saved by {world} process(es) with {old_size} samples per step and "
        f"{saved_batches} batches per epoch; this run has {processes}, {new_size} and {batches_per_epoch}. Weights, "
        f"optimizer, callbacks and epoch are restored and {place}; the epochs after it are whole."
        f"{_lr_steps(trainer, left_now, (saved_batches or 0) - batch, saved_batches)} The random streams cannot "
        "match, so the run goes on soundly but not bit-identically. A different global batch size may want another "
        "learning rate (docs/scaling.md)."
    )
    return resume
