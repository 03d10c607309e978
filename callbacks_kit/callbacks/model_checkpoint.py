"""ModelCheckpoint: crash-safe full-state checkpoints, the best `k` by a metric, and the last."""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from accelerate.utils import broadcast_object_list

from callbacks_kit.cadence import check_cadence
from callbacks_kit.callbacks.base import Callback, Order
from callbacks_kit.callbacks.best_weights import check_best, validated_weights, validator, write_best
from callbacks_kit.callbacks.checkpoint_state import collect_files, finite_state, unsaved
from callbacks_kit.callbacks.monitor import Monitor, check_mode
from callbacks_kit.checkpoint.background import BackgroundSave
from callbacks_kit.checkpoint.files import MainFiles
from callbacks_kit.checkpoint.format import Position, folder_name
from callbacks_kit.checkpoint.repair import clean_leftovers, unkept_folders
from callbacks_kit.checkpoint.snapshot import HostSnapshot
from callbacks_kit.checkpoint.store import (
    begin_save,
    check_writable,
    finish_save,
    remove_folder,
    write_pointer,
)
from callbacks_kit.distributed import HostAgreement
from callbacks_kit.errors import CheckpointError, FolderInUseError, TrainerError
from callbacks_kit.folder_lock import FolderLock

if TYPE_CHECKING:
    from callbacks_kit.trainer import Trainer


class ModelCheckpoint(Callback):
    """Saves the full training state (the layout: `callbacks_kit.checkpoint.format`).

    Saves at the end of every `every_n_epochs`-th epoch, of the last epoch and of an
    early-stopped one; every `every_n_steps` optimizer steps and every `every_n_minutes`
    minutes if given; and when `fit` ends elsewhere (a stop mid-epoch, a preemption). Only
    epoch-end saves, with fresh validation metrics, compete for the best `save_top_k`; step
    and timed saves only refresh `last`.
    `last.json` always names the newest checkpoint; other folders are pruned once the new
    one is committed. The best model's weights are also exported to `best.safetensors`
    (load them with `callbacks_kit.finetune.load_weights`); when `monitor` measures a model
    that another callback publishes for its prefix (`Callback.validated_models`: an `EMA`'s
    `val_ema/...`), that model's weights are the ones exported.

    With `async_save` (the default) the loop only waits for a host copy of the state;
    encoding, hashing, writing, fsync, the commit, `last.json`, `best.safetensors` and
    pruning run on a background thread, with the same crash safety. One save is in flight
    at most (the next waits for it); a failure is found at the next step boundary and tried
    once more at once (a second failure stops training, saying what is not saved), and `fit`
    ends (also on an exception or a preemption) only once it is done. The cost: one extra
    host copy of the model and optimizer state, kept between saves. With
    several processes the commit of a save happens at the next save or at fit end, so
    `last.json` lags by one save (docs/checkpointing.md). `last_path` names a folder
    that may still be in flight until `fit` returns or `save_now()` is called. A resume
    removes the folders a kill left that its record does not keep, and fixes best.safetensors.

    Args:
        dirpath: Folder of the checkpoints, created if needed; checked for writing at fit start.
        monitor: Metric ranking the checkpoints, e.g. "val/accuracy"; None keeps only the last.
        mode: "min" or "max": which direction of `monitor` is better.
        save_top_k: Best checkpoints to keep; 0 none, -1 all.
        save_last: Keep the newest checkpoint too, even when it is not among the best.
        every_n_epochs: Save every this many epochs (None: only at the last epoch and stops).
        every_n_steps: Also save every this many optimizer steps (mid-epoch; exact resume).
        every_n_minutes: Also save when this many minutes passed since the last save (or fit
            start), for epochs too long to lose. One process looks at its clock after every
            optimizer step; several agree at log steps (`log_every_n_steps`), where the
            loop reads the loss anyway, with one 4-byte host all-reduce: the save comes at
            the first log step after the time is up.
        async_save: Write checkpoints on a background thread (False: the loop waits for each save).
    """

    order = Order.SAVE

    def __init__(
        self,
        dirpath: str | os.PathLike[str],
        monitor: str | None = None,
        mode: str = "min",
        save_top_k: int = 1,
        save_last: bool = True,
        every_n_epochs: int | None = 1,
        every_n_steps: int | None = None,
        async_save: bool = True,
        every_n_minutes: float | None = None,
    ) -> None:
        check_mode(mode, "ModelCheckpoint")  # also without a monitor: the mode is part of state_key
        self.monitor = Monitor(monitor, mode, owner="ModelCheckpoint") if monitor is not None else None
        if not isinstance(save_top_k, int) or save_top_k < -1:
            raise TrainerError(f"ModelCheckpoint: save_top_k must be an int >= -1, got {save_top_k!r}")
        check_cadence("ModelCheckpoint", every_n_epochs=every_n_epochs, every_n_steps=every_n_steps,
                      every_n_minutes=every_n_minutes)  # fmt: skip
        self.every_n_minutes = every_n_minutes
        # When the last save (or fit) started; the agreement learns the number of processes at fit start.
        self._clock, self._agreement = time.monotonic(), HostAgreement(1)
        self.dirpath = Path(dirpath)
        self.mode, self.save_top_k, self.save_last = mode, save_top_k, save_last
        self.every_n_epochs, self.every_n_steps = every_n_epochs, every_n_steps
        if not isinstance(async_save, bool):
            raise TrainerError(f"ModelCheckpoint: async_save must be True or False, got {async_save!r}")
        self.async_save = async_save
        self._background = BackgroundSave()
        self._snapshot = HostSnapshot() if async_save else None
        self.best_k: dict[str, float] = {}  # folder name -> monitored score
        self.last_name: str | None = None
        self._position: Position | None = None  # after the latest optimizer step or epoch end
        self._saved_at: Position | None = None
        self._considered: Position | None = None  # an epoch end that was due but not worth keeping
        self._stale: list[str] = []  # folders the newest save prunes once committed (a resume finishes that)
        self._resumed = False
        self._fitting = False
        self._checked = False
        self._lock = FolderLock(
            self.dirpath,
            "the checkpoint folder",
            "Wait for it to end, or give this run its own folder (ModelCheckpoint(dirpath=...), --checkpoint-dir "
            "or --log-dir).",
        )

    # ---------------------------------------------------------------------------------- state
    @property
    def best_name(self) -> str | None:
        """Folder of the best checkpoint so far, or None."""
        if not self.best_k or self.monitor is None:
            return None
        return self.monitor.best_of(self.best_k)

    @property
    def best_model_path(self) -> Path | None:
        """The best checkpoint folder, or None."""
        return self.dirpath / self.best_name if self.best_name else None

    @property
    def last_path(self) -> Path | None:
        """The newest checkpoint folder, or None."""
        return self.dirpath / self.last_name if self.last_name else None

    @property
    def checkpoint_dir(self) -> Path:
        """The checkpoint folder, where `fit(resume_from="last")` looks."""
        return self.dirpath

    @property
    def position(self) -> Position | None:
        """Where a resume from a checkpoint saved now would continue (None before any step)."""
        return self._position

    @property
    def state_key(self) -> str:
        """Unique per configuration, so several ModelCheckpoints can be used together."""
        monitor = self.monitor.key if self.monitor else None
        return f"ModelCheckpoint[{monitor},{self.mode},{self.every_n_epochs},{self.every_n_steps}]"

    def saved_state_key(self, saved: Collection[str]) -> str | None:
        """Its own key, else the one key saved with the same monitor and mode under another save cadence.

        `every_n_epochs` and `every_n_steps` are part of `state_key` (two ModelCheckpoints may
        rank the same metric at other cadences), but a resume that saves more or less often
        (`--save-every-steps` added or dropped) is the same ranking: its best scores go on.
        """
        if self.state_key in saved:
            return self.state_key
        monitor = self.monitor.key if self.monitor else None
        same = [key for key in saved if key.startswith(f"ModelCheckpoint[{monitor},{self.mode},")]
        return same[0] if len(same) == 1 else None

    def state_dict(self) -> dict[str, Any]:
        position = [self._saved_at.epoch, self._saved_at.batch] if self._saved_at else None
        monitor = self.monitor.key if self.monitor else None
        return {"monitor": monitor, "mode": self.mode, "best_k": dict(self.best_k), "last": self.last_name,
                "position": position, "stale": list(self._stale)}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        same = state.get("monitor") == (self.monitor.key if self.monitor else None) and state.get("mode") == self.mode
        # Only folders of this dirpath: a run resumed from another folder never prunes that one.
        best_k = state.get("best_k", {}) if same else {}
        self.best_k = {k: float(v) for k, v in best_k.items() if (self.dirpath / k).is_dir()}
        last = state.get("last")
        self.last_name = last if last and (self.dirpath / last).is_dir() else None
        self._position = Position(*state["position"]) if state.get("position") else None
        self._saved_at = self._position if self.last_name else None  # else: not saved in this folder yet
        self._stale = [name for name in state.get("stale", []) if isinstance(name, str)]
        self._resumed = True

    # ---------------------------------------------------------------------------------- events
    def on_fit_start(self, trainer: Trainer) -> None:
        self._fitting, self._checked = True, False
        self._clock = time.monotonic()
        self._agreement = HostAgreement(trainer.accelerator.num_processes)
        error, in_use = None, False
        if trainer.is_main_process:
            error = check_writable(self.dirpath)
            if error is None:
                # One writer per folder: the main process holds the lock for the whole launch.
                try:
                    self._lock.acquire()
                except CheckpointError as exc:  # in use, or a folder where the lock file goes
                    error, in_use = str(exc), isinstance(exc, FolderInUseError)
            if error is None:
                clean_leftovers(self.dirpath)
                if self._resumed and self.last_name:
                    self._repair(trainer, self.last_name)
        self._resumed = False
        if trainer.accelerator.num_processes > 1:
            box: list[Any] = [error, in_use]  # a str | None and a bool, overwritten with the main process's
            broadcast_object_list(box, from_process=0)
            error, in_use = box
        if error:
            raise (FolderInUseError if in_use else CheckpointError)(error)

    def on_train_batch_end(self, trainer: Trainer) -> None:
        state = trainer.state
        if state.optimizer_stepped:  # else mid-accumulation: gradients in flight are not part of a checkpoint
            self._position = Position(state.epoch, state.batch_idx + 1, trainer.epoch_samples.done)
        if self._background.failed:  # at the first step boundary after the failure, without waiting; the
            self._retry(trainer)  # step saves below and the stop agreement after the batch are on every process
        if not state.optimizer_stepped:
            return
        if (self.every_n_steps and state.global_step % self.every_n_steps == 0) or self._time_is_up(trainer):
            self._save(trainer, rank=False, should_stop=False)

    def _time_is_up(self, trainer: Trainer) -> bool:
        """`every_n_minutes` passed since the last save: every step in one process, agreed at log steps in several."""
        if self.every_n_minutes is None or (self._agreement.num_processes > 1 and not trainer.state.is_log_step):
            return False
        return self._agreement.any(time.monotonic() - self._clock >= 60 * self.every_n_minutes)

    def on_validation_end(self, trainer: Trainer) -> None:
        if self.monitor is None or not self._fitting or self._checked:
            return
        if validator(trainer, self.monitor) is not None and trainer.state.validation_prefix != self.monitor.prefix:
            return  # `<prefix>/...` exists only after that callback's own validation (an EMA's `val_ema`)
        self.monitor.read(trainer)  # a missing key fails at the first validation
        self._checked = True

    def on_epoch_end(self, trainer: Trainer) -> None:
        state = trainer.state
        self._position = Position(state.epoch + 1, 0)
        done = state.epoch + 1
        due = (self.every_n_epochs is not None and done % self.every_n_epochs == 0) or done >= state.max_epochs
        if due or state.should_stop:
            # A stop requested by now (early stopping) is part of the run: a resume stops too.
            self._save(trainer, rank=True, should_stop=state.should_stop)

    def on_fit_end(self, trainer: Trainer) -> None:
        self._fitting = False
        if self._position is not None and self._position not in (self._saved_at, self._considered):
            self._save(trainer, rank=False, should_stop=False, force=True)  # stopped mid-epoch, preempted
        self._complete(trainer)  # fit ends once the save in flight is committed (or raises)

    def on_exception(self, trainer: Trainer) -> None:
        self._fitting = False  # nothing new is saved: the state may be what failed (NaN, OOM...)
        self._finish_in_flight(trainer)

    def on_teardown(self, trainer: Trainer) -> None:
        try:
            error = self._finish_in_flight(trainer)
            if error is not None and trainer.exception is None:
                raise error
        finally:
            self._lock.release()

    def _finish_in_flight(self, trainer: Trainer) -> CheckpointError | None:
        """Wait for a save in flight without collectives (fit is leaving early); say if it failed."""
        name = self._background.in_flight
        error = self._background.abandon()
        if error is not None and trainer.exception is not None:
            trainer.print(f"ModelCheckpoint: the background save of {name} failed too: {error}")
        return error

    # ---------------------------------------------------------------------------------- saving
    def save_now(self, trainer: Trainer) -> Path | None:
        """Save the position of the latest optimizer step or epoch end, unless already saved.

        Every process must call it. It returns once the checkpoint is committed (an
        asynchronous save included). Returns the newest checkpoint folder (None: nothing yet).
        """
        if self._position is not None and self._position != self._saved_at:
            self._save(trainer, rank=False, should_stop=False, force=True)
        self._complete(trainer)
        return self.last_path

    def _save(self, trainer: Trainer, rank: bool, should_stop: bool, force: bool = False) -> None:
        state, position = trainer.state, self._position
        assert position is not None
        self._complete(trainer)  # one save in flight at most; its failure surfaces here
        self._considered = position
        self._clock = time.monotonic()
        score = None
        if rank and self.monitor is not None:
            score = self.monitor.read(trainer)
        ranked = score is not None and math.isfinite(score) and self.save_top_k != 0 and self._qualifies(score)
        if not (ranked or self.save_last or force):
            return
        trainer.callbacks.fire("on_save_checkpoint", trainer)  # a guard (TerminateOnNaN) may refuse the save
        weights = trainer.unwrapped_model.state_dict()  # live; checked, then copied (or written) by the save
        if not finite_state(
            trainer, self.monitor, self.last_name, score, weights
        ):  # with or without the guard, never replace a clean one
            return
        name = folder_name(position, state.global_step)
        old_best, old_last, old_saved, old_stale = dict(self.best_k), self.last_name, self._saved_at, self._stale
        validated = validated_weights(trainer, self.monitor) if ranked else None  # taken now: training goes on

        def collect(final: str) -> tuple[dict[str, bytes], MainFiles | None]:
            if ranked:
                assert self.monitor is not None and score is not None
                self.best_k[final] = score
                if self.save_top_k > 0 and len(self.best_k) > self.save_top_k:
                    del self.best_k[self.monitor.worst_of(self.best_k)]
            self.last_name, self._saved_at = final, position  # recorded in the state saved now
            self._stale = sorted({*old_best, *filter(None, [old_last])} - {*self.best_k, final})  # pruned on commit
            return collect_files(trainer, position, should_stop, meta, self._snapshot, weights)

        def after_commit(folder: Path) -> None:
            write_pointer(self.dirpath, folder.name)
            if self.best_name == folder.name:
                write_best(self.dirpath, folder, validated)
            for stale in self._stale:
                remove_folder(self.dirpath / stale)

        def rollback() -> None:
            self.best_k, self.last_name, self._saved_at, self._stale = old_best, old_last, old_saved, old_stale

        meta = {"monitor": self.monitor.key, "score": repr(score)} if self.monitor and score is not None else {}
        try:
            accelerator = trainer.accelerator
            pending = begin_save(self.dirpath, name, position, collect, global_step=state.global_step,
                                 world_size=accelerator.num_processes, is_main=accelerator.is_main_process,
                                 after_commit=after_commit)  # fmt: skip
            if self.async_save:
                self._background.submit(pending, rollback)
                return
            pending.write()
            finish_save(pending)
        except CheckpointError as exc:
            rollback()
            raise CheckpointError(
                f"{exc} {unsaved(self._position, self.last_name, trainer.state.global_step)}"
            ) from None
        except BaseException:
            rollback()
            raise

    # ---------------------------------------------------------------------------------- failures and kills
    def _retry(self, trainer: Trainer) -> None:
        """A failed background save, found at a step boundary: tried again now; training stops if that fails too.

        With one process the failure is raised here; with several, this process asks for a
        stop (agreed by every process after this step) and `fit` ends raising it everywhere.
        """
        first = self._background.retry()
        if first is not None:
            where = f"optimizer step {trainer.state.global_step}"
            warnings.warn(f"ModelCheckpoint: {first.split('. ')[0]}; a second try at {where} saved it", stacklevel=2)
        elif trainer.accelerator.num_processes == 1:
            self._complete(trainer)
        else:
            trainer.state.should_stop = True

    def _complete(self, trainer: Trainer) -> None:
        """Finish the save in flight; its failure is raised with what training it leaves unsaved."""
        try:
            first = self._background.complete()
        except CheckpointError as exc:
            raise CheckpointError(
                f"{exc} {unsaved(self._position, self.last_name, trainer.state.global_step)}"
            ) from None
        if first is not None:
            warnings.warn(f"ModelCheckpoint: {first.split('. ')[0]}; a second try saved it", stacklevel=2)

    def _repair(self, trainer: Trainer, last: str) -> None:
        """After a resume (main process): remove the folders a kill left that the record does not keep, fix best."""
        removed = unkept_folders(self.dirpath, last, {*self.best_k, last}, self._stale)
        for name in removed:
            remove_folder(self.dirpath / name)
        if removed:
            trainer.print(
                f"ModelCheckpoint: removed {', '.join(removed)} from {self.dirpath}: saved after, or left to prune "
                f"by, the checkpoint resumed from ({last}), by a run killed before it finished that save"
            )
        best = self.best_name
        note = check_best(trainer, self.dirpath, best, last, self.monitor) if best else None
        if note:
            trainer.print(f"ModelCheckpoint: {note}")

    def _qualifies(self, score: float) -> bool:
        assert self.monitor is not None
        if self.save_top_k == -1 or len(self.best_k) < self.save_top_k:
            return True
        return self.monitor.is_better(score, self.best_k[self.monitor.worst_of(self.best_k)])
