"""BackgroundSave: at most one checkpoint save in flight on a background thread.

The loop thread collects a consistent state (`store.begin_save` with a `HostSnapshot`) and
hands it over; the thread encodes, hashes, writes and fsyncs the files (`PendingSave.write`).
With one process the thread also commits: meta.json, the rename, `last.json`, `best.safetensors`
and pruning (`store.finish_save`). With several, the processes must agree that every rank's
part is written before the main process commits, and that takes a collective, which is only
safe on the loop thread (gloo collectives of two threads could interleave): the commit then
runs at the next save or at fit end, on every process at once, so `last.json` lags by one save
and never names a folder that is not whole.

A failure is raised by `complete()`, at the next save or at fit end, as the `CheckpointError`
naming the checkpoint; the earlier checkpoints and `last.json` are as they were.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from callbacks_kit.checkpoint.store import PendingSave, finish_save
from callbacks_kit.errors import CheckpointError


class BackgroundSave:
    """One worker thread per save, never two at a time: `submit` requires `complete` (or `abandon`) first."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._pending: PendingSave | None = None
        self._rollback: Callable[[], None] | None = None
        self._error: CheckpointError | None = None

    @property
    def in_flight(self) -> str | None:
        """The name of the checkpoint being saved (or waiting for its commit), or None."""
        return self._pending.name if self._pending is not None else None

    def submit(self, pending: PendingSave, rollback: Callable[[], None]) -> None:
        """Write (and, in one process, commit) `pending` on a new thread; `rollback` undoes the caller's record."""
        if self._pending is not None:
            raise RuntimeError(f"a save is already in flight ({self._pending.name}); complete() it first")
        self._pending, self._rollback, self._error = pending, rollback, None
        self._thread = threading.Thread(target=self._run, args=(pending,), name=f"checkpoint {pending.name}")
        self._thread.start()

    def _run(self, pending: PendingSave) -> None:
        pending.write()
        if pending.world_size == 1:  # no collective: the whole save can end here
            try:
                finish_save(pending)
            except CheckpointError as exc:
                self._error = exc

    def complete(self) -> None:
        """Wait for the save in flight and finish it; raise its `CheckpointError` if it failed.

        With several processes every process must call it at the same point (it commits).
        """
        pending, rollback = self._take()
        if pending is None:
            return
        error = self._error
        if error is None and pending.world_size > 1:
            try:
                finish_save(pending)
            except CheckpointError as exc:
                error = exc
        if error is not None:
            assert rollback is not None
            rollback()
            raise error

    def abandon(self) -> CheckpointError | None:
        """Wait for the thread without any collective (fit is failing); returns the save's error, if any.

        In one process the save was committed on the thread; with several its commit never
        happens, so its temporary folder is removed (and the caller's record rolled back).
        """
        pending, rollback = self._take()
        if pending is None:
            return None
        error = self._error
        if error is not None or pending.world_size > 1:
            if pending.world_size > 1:
                pending.discard()
            assert rollback is not None
            rollback()
        return error

    def _take(self) -> tuple[PendingSave | None, Callable[[], None] | None]:
        if self._thread is not None:
            self._thread.join()
        pending, rollback = self._pending, self._rollback
        self._thread = self._pending = self._rollback = None
        return pending, rollback
