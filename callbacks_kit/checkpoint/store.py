"""Crash-safe checkpoint folders: an atomic save of the files of one checkpoint, verified loads.

One checkpoint is one folder (its names: `callbacks_kit.checkpoint.format`), committed by a
single atomic rename, with a meta.json giving the size and checksum of every file. Next to the
folders: `last.json` (the newest committed folder, replaced atomically after each
commit), `best.safetensors` (see `ModelCheckpoint`), and `.tmp-*` / `.trash-*` leftovers of a
killed save or prune, which `clean_leftovers` removes. Writes go into `.tmp-<name>`, are
fsynced, then renamed; a kill at any moment leaves `last.json` pointing at a whole checkpoint.
Written files leave the page cache once fsynced (`_drop_cached`).
This module knows nothing of training: the caller hands it files (`checkpoint.files`) and
says which process it runs in. Resuming is in `callbacks_kit.checkpoint.restore`.

A save has three steps (`begin_save`, `PendingSave.write`, `finish_save`) so that the middle
one can run on a background thread (`checkpoint.background`): `begin_save` names the folder
and has the caller collect its files on the loop thread, `write` encodes, writes, hashes and
fsyncs them, and `finish_save` agrees across processes, commits, and runs `after_commit`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accelerate.utils import broadcast_object_list, gather_object

from callbacks_kit.checkpoint.digest import Data, HashingParts, digest
from callbacks_kit.checkpoint.files import MainFiles
from callbacks_kit.checkpoint.format import (
    FORMAT,
    META,
    POINTER,
    TMP_PREFIX,
    TRASH_PREFIX,
    VERSION,
    Position,
    numbered_name,
)
from callbacks_kit.errors import CheckpointError

# Given the final folder name: this process's own files, and the main files on the main process.
Collect = Callable[[str], tuple[dict[str, bytes], MainFiles | None]]
FINISHING = "updating last.json and best.safetensors or pruning"


# ------------------------------------------------------------------------------ low-level writes
def _drop_cached(fd: int) -> None:
    """Let the kernel drop a file's pages from the page cache once they are on the disk.

    A checkpoint is written once and read at most at a resume, while its pages would crowd
    out what training reads again (the dataset's files) and make the next save's writes
    find memory first. Where free memory goes back to the host, as on VMs with free page
    reporting, writing into fresh pages costs far more: 90 MB took 0.47 s of CPU into new
    pages there against 17 ms into pages just dropped. Advice only: a no-op where the OS
    has no `posix_fadvise` or the filesystem keeps its pages (tmpfs), and never a failed save.
    """
    if hasattr(os, "posix_fadvise"):
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def _write_file(path: Path, data: Data | HashingParts) -> None:
    """Write and fsync one file (the one place bytes reach the disk; tests fail it on purpose)."""
    with open(path, "wb") as f:
        for part in [data] if isinstance(data, bytes) else data:
            f.write(part)  # releases the GIL: a background save does not stall the loop here
        f.flush()
        os.fsync(f.fileno())
        _drop_cached(f.fileno())


def _fsync_dir(path: Path) -> None:
    """Make a rename or a new file in `path` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: Data) -> None:
    """Replace `path` with `data` so that a reader sees the old file or the new one, whole."""
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}")
    try:
        _write_file(tmp, data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def copy_atomic(source: Path, path: Path) -> None:
    """Replace `path` with a copy of the file `source`, as `write_atomic` does.

    The kernel copies the bytes (`shutil.copyfile` uses `sendfile` on Linux): nothing is
    read into Python, and the GIL is released while it copies. Neither file stays in the
    page cache afterwards.
    """
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}")
    try:
        shutil.copyfile(source, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
            _drop_cached(f.fileno())
        with open(source, "rb") as f:
            _drop_cached(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def remove_folder(path: Path) -> None:
    """Delete a checkpoint folder crash-safely: rename it to `.trash-*` first, then delete."""
    if not path.exists():
        return
    trash = path.with_name(f"{TRASH_PREFIX}{path.name}")
    shutil.rmtree(trash, ignore_errors=True)
    os.rename(path, trash)
    _fsync_dir(path.parent)
    shutil.rmtree(trash, ignore_errors=True)


def check_writable(dirpath: Path) -> str | None:
    """None when checkpoints can be written into `dirpath` (created if needed), else why not."""
    probe = dirpath / f"{TMP_PREFIX}write-test-{os.getpid()}"
    try:
        dirpath.mkdir(parents=True, exist_ok=True)
        _write_file(probe, b"ok")
        probe.unlink()
    except OSError as exc:
        return (
            f"the checkpoint folder {dirpath} is not writable ({exc.strerror or exc}); pick a folder you can "
            "write to (ModelCheckpoint(dirpath=...) or --checkpoint-dir) or fix its permissions"
        )
    return None


# ------------------------------------------------------------------------------ pointer and listing
def write_pointer(dirpath: Path, name: str) -> None:
    """Point `last.json` at the committed folder `name`."""
    write_atomic(dirpath / POINTER, json.dumps({"checkpoint": name}).encode())


def read_pointer(dirpath: Path) -> str | None:
    """The folder `last.json` names, or None when there is no readable pointer."""
    try:
        return str(json.loads((dirpath / POINTER).read_text())["checkpoint"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def list_checkpoints(dirpath: Path) -> list[tuple[str, dict[str, Any]]]:
    """Committed checkpoint folders in `dirpath` with their meta, oldest position first."""
    found = []
    for entry in dirpath.iterdir() if dirpath.is_dir() else []:
        if entry.name.startswith(".") or not (entry / META).is_file():
            continue
        try:
            meta = json.loads((entry / META).read_text())
        except (OSError, ValueError):
            continue
        found.append((entry.name, meta))
    return sorted(found, key=lambda item: (item[1].get("global_step", 0), item[1].get("epoch", 0), item[0]))


def describe(dirpath: Path) -> str:
    """A short list of the checkpoints in `dirpath`, for error messages."""
    names = [name for name, _ in list_checkpoints(dirpath)]
    return f"checkpoints in {dirpath}: {', '.join(names[-5:])}" if names else f"no checkpoints in {dirpath}"


# ------------------------------------------------------------------------------ saving
def _agree(world_size: int, error: str | None) -> str | None:
    """The first error of any process, known to every process (one collective; none in one process)."""
    if world_size == 1:
        return error
    errors = gather_object([error])
    return next((e if r == 0 else f"on process {r}: {e}" for r, e in enumerate(errors) if e), None)


def _free_name(dirpath: Path, name: str) -> str:
    candidate, version = name, 0
    while (dirpath / candidate).exists():
        version += 1
        candidate = numbered_name(name, version)
    return candidate


def _commit(pending: PendingSave) -> None:
    """Describe every file in meta.json, fsync, and rename the folder into place.

    The digests of the files this process wrote are known; the others' are read back.
    """
    tmp, known, position = pending.tmp, pending.digests, pending.position
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "world_size": pending.world_size,
        "epoch": position.epoch,
        "batch": position.batch,
        "global_step": pending.global_step,
        "files": {p.name: known.get(p.name) or digest(p.read_bytes()) for p in sorted(tmp.iterdir())},
    }
    _write_file(tmp / META, json.dumps(meta, indent=1).encode())
    _fsync_dir(tmp)
    os.rename(tmp, pending.final)
    pending.committed = True
    _fsync_dir(pending.final.parent)


def _conclude(pending: PendingSave) -> str | None:
    """Commit (unless done already) and run `after_commit`, on the main process; the failure, worded, or None."""
    doing = "committing"
    try:
        if not pending.committed:
            _commit(pending)
        doing = FINISHING
        if pending.after_commit is not None:
            pending.after_commit(pending.final)
    except Exception as exc:  # any failure must reach every process, or they would wait forever
        return _failure(pending.dirpath, pending.name, doing, exc, pending.retried)
    return None


def _failure(dirpath: Path, name: str, doing: str, exc: BaseException, retried: bool = False) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        reason = f"{exc.strerror} ({exc.filename})" if exc.filename else exc.strerror
    else:
        reason = str(exc)
    again = " (a second try failed too)" if retried else ""
    last = read_pointer(dirpath)
    if doing == FINISHING:
        what = f"checkpoint {name!r} was committed in {dirpath}, but {doing} failed: {reason}{again}"
    else:
        what = f"could not save checkpoint {name!r} in {dirpath} while {doing}: {reason}{again}"
    kept = (
        f"No saved checkpoint was lost: {last!r} is intact and last.json points to it"
        if last
        else "No checkpoint of this folder was saved before it"
    )
    fix = "Free some disk space or fix the folder" if isinstance(exc, OSError) else "Fix that"
    return f"{what}. {kept}. {fix}, then resume with resume_from='last' (--resume last)."


@dataclass
class PendingSave:
    """One process's part of a save between `begin_save` and `finish_save`.

    Its state is collected: host tensors nothing changes any more, JSON already encoded, so
    `write` may run on any thread. `error` is the first failure, already worded for the user.
    """

    dirpath: Path
    name: str
    position: Position
    world_size: int
    global_step: int
    is_main: bool
    files: dict[str, bytes] = field(default_factory=dict)
    main: MainFiles | None = None
    after_commit: Callable[[Path], None] | None = None
    digests: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    written: bool = False
    committed: bool = False
    retried: bool = False
    first_error: str | None = None

    @property
    def tmp(self) -> Path:
        """The temporary folder the files go to."""
        return self.dirpath / f"{TMP_PREFIX}{self.name}"

    @property
    def final(self) -> Path:
        """The folder once committed."""
        return self.dirpath / self.name

    def write(self) -> None:
        """Encode, write and fsync this process's files into the temporary folder; a failure sets `error`.

        Touches no collective and nothing the loop changes: safe on a background thread.
        """
        doing = "encoding the state"
        try:
            files: dict[str, Data] = dict(self.files)
            if self.main is not None:
                files.update(self.main.files())
            for filename, data in files.items():
                doing = f"writing {filename}"
                parts = HashingParts(data)
                _write_file(self.tmp / filename, parts)
                self.digests[filename] = parts.digest()
        except Exception as exc:  # reported by finish_save, on every process
            self.error = self.error or _failure(self.dirpath, self.name, doing, exc, self.retried)
        self.written = True

    def retry(self, commit: bool) -> None:
        """Try a failed save a second time, from the files it holds; touches no collective.

        The host copies it holds are those of its position (nothing changes them before the
        next save begins). Before the commit, the files are written again, and with `commit`
        (one process: nobody else must agree) committed; after the commit, only
        `after_commit` runs again. A failure sets `error` again, saying it was the second try.
        """
        self.first_error, self.error, self.retried = self.error, None, True
        if not self.committed:
            self.digests.clear()
            try:
                if self.is_main:
                    self.tmp.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                self.error = _failure(self.dirpath, self.name, "creating its temporary folder", exc, True)
                return
            self.write()
            if not commit:
                return  # the agreement of `finish_save` removes the temporary folder of a failure
        if self.error is None:
            self.error = _conclude(self)
        if self.error is not None:
            self.discard()

    def discard(self) -> None:
        """Remove the temporary folder of a failed save (main process; a committed folder stays)."""
        if self.is_main:
            shutil.rmtree(self.tmp, ignore_errors=True)


def begin_save(
    dirpath: str | os.PathLike[str],
    name: str,
    position: Position,
    collect: Collect,
    *,
    global_step: int,
    world_size: int,
    is_main: bool,
    after_commit: Callable[[Path], None] | None = None,
) -> PendingSave:
    """Name the checkpoint and collect this process's files (the loop thread; every process calls it).

    The main process picks a free name (`-v<n>` added if `name` is taken) and creates the
    temporary folder; every process then gets that name and calls `collect(name)`, which
    returns its own files and, on the main process, the main files (`checkpoint.files`):
    host copies that nothing changes any more, so training may go on while `write` runs.

    Args:
        dirpath: The checkpoint directory.
        name: The folder name wanted (`format.folder_name`).
        position: Where a resume continues (written to meta.json).
        collect: Called with the final name; may record it in the state it collects.
        global_step: The optimizer step saved (written to meta.json).
        world_size: How many processes save together; with more than one, the agreements are collectives.
        is_main: True on the process that creates, commits and cleans up the folder.
        after_commit: Called on the main process with the committed folder (pointer, pruning).

    Raises:
        CheckpointError: on every process, when the folder cannot be created or the state
            cannot be collected anywhere (nothing was written then).
    """
    dirpath = Path(dirpath)
    error: str | None = None
    if is_main:
        try:
            name = _free_name(dirpath, name)
            shutil.rmtree(dirpath / f"{TMP_PREFIX}{name}", ignore_errors=True)
            (dirpath / f"{TMP_PREFIX}{name}").mkdir(parents=True)
        except OSError as exc:
            error = _failure(dirpath, name, "creating its temporary folder", exc)
    if world_size > 1:
        box: list[Any] = [name, error]  # a str and a str | None, overwritten with the main process's
        broadcast_object_list(box, from_process=0)
        name, error = box
    if error:
        raise CheckpointError(error)
    pending = PendingSave(dirpath, name, position, world_size, global_step, is_main, after_commit=after_commit)
    try:
        pending.files, pending.main = collect(name)
    except Exception as exc:  # any failure must reach every process, or they would wait forever
        error = _failure(dirpath, name, "collecting the state", exc)
    error = _agree(pending.world_size, error)
    if error:
        pending.error = error
        pending.discard()
        raise CheckpointError(error)
    return pending


def finish_save(pending: PendingSave) -> Path:
    """Agree that every process wrote its files, commit on the main process, run `after_commit`.

    Every process calls it; it holds the collectives of a save, so with several processes it
    runs on the loop thread (with one, anywhere). Raises the same `CheckpointError` on every
    process when anything failed; the temporary folder is then removed and the earlier
    checkpoints and `last.json` are as they were.
    """
    error = _agree(pending.world_size, pending.error)
    if error is None and pending.is_main:
        error = _conclude(pending)
    error = _agree(pending.world_size, error)
    if error:
        pending.error = error
        pending.discard()
        raise CheckpointError(error)
    return pending.final
