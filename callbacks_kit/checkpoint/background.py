"""BackgroundSave: at most one checkpoint save in flight on a background thread.

The loop thread collects a consistent state (`store.begin_save` with a `HostSnapshot`) and
hands it over; the thread encodes, hashes, writes and fsyncs the files (`PendingSave.write`).
With one process the thread also commits: meta.json, the rename, `last.json`, `best.safetensors`
and pruning (`store.finish_save`). With several, the processes must agree that every rank's
part is written before the main process commits, and that takes a collective, which is only
safe on the loop thread (gloo collectives of two threads could interleave): the commit then
runs at the next save or at fit end, on every process at once, so `last.json` lags by one save
and never names a folder that is not whole.

A failure (a full disk) is found by `failed` at the next step boundary, without waiting, or
by `complete()` at the next save or at fit end; either way the save is tried a second time
at once, on the loop thread, from the host copies it still holds (`PendingSave.retry`), so a
disk that has room again loses nothing. When the second try fails too, `complete()` raises
the `CheckpointError` naming the checkpoint; the earlier checkpoints and `last.json` are as
they were.
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

    @property
    def in_flight(self) -> str | None:
        """The name of the checkpoint being saved (or waiting for its commit), or None."""
        return self._pending.name if self._pending is not None else None

    @property
    def failed(self) -> bool:
        """Whether the save in flight has ended in a failure not yet tried again (never waits).

        With several processes this is this process's own part (its files); the others learn
        of it at the agreement of `complete()`.
        """
        pending, thread = self._pending, self._thread
        done = thread is None or not thread.is_alive()
        return pending is not None and done and pending.error is not None and not pending.retried

    def submit(self, pending: PendingSave, rollback: Callable[[], None]) -> None:
        """Write (and, in one process, commit) `pending` on a new thread; `rollback` undoes the caller's record."""
        if self._pending is not None:
            raise RuntimeError(f"a save is already in flight ({self._pending.name}); complete() it first")
        self._pending, self._rollback = pending, rollback
        go = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(pending, go), name=f"checkpoint {pending.name}")
        self._thread.start()
        # `start()` returns once the thread runs; it then waits for `go`, so the loop takes the GIL
        # back at once instead of waiting (up to the 5 ms switch interval) while the thread encodes.
        go.set()

    @staticmethod
    def _run(pending: PendingSave, go: threading.Event) -> None:
        go.wait()
        pending.write()
        if pending.world_size == 1:  # no collective: the whole save can end here
            try:
                finish_save(pending)
            except CheckpointError:
                pass  # kept in pending.error, for `failed` and `complete()`

    def retry(self) -> str | None:
        """Try the failed save (`failed`) a second time, on this thread, now; no collective.

        Returns the first failure's message when the second try worked (with one process the
        save is then committed and done; with several its commit waits for `complete()`), None
        when it failed too: `complete()` raises that.
        """
        pending = self._pending
        assert pending is not None and self._thread is not None
        self._thread.join()
        pending.retry(commit=pending.world_size == 1)
        if pending.error is not None:
            return None
        if pending.world_size == 1:
            self._take()
        return pending.first_error

    def complete(self) -> str | None:
        """Wait for the save in flight and finish it; raise its `CheckpointError` if it failed twice.

        A failure not yet tried again is tried a second time first. Returns the first
        failure's message when a second try saved it, else None. With several processes
        every process must call it at the same point (it commits).
        """
        pending, rollback = self._take()
        if pending is None:
            return None
        retried_now = pending.error is not None and not pending.retried
        if retried_now:
            pending.retry(commit=pending.world_size == 1)
        try:
            if pending.world_size > 1:
                finish_save(pending)  # agrees on every process's part; raises everywhere if one failed
            elif pending.error is not None:
                raise CheckpointError(pending.error)
        except CheckpointError:
            assert rollback is not None
            rollback()
            raise
        return pending.first_error if retried_now else None

    def abandon(self) -> CheckpointError | None:
        """Wait for the thread without any collective (fit is failing); returns the save's error, if any.

        In one process the save was committed on the thread; with several its commit never
        happens, so its temporary folder is removed (and the caller's record rolled back).
        """
        pending, rollback = self._take()
        if pending is None:
            return None
        error = CheckpointError(pending.error) if pending.error is not None and pending.world_size == 1 else None
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
