"""One writer per folder: a lock file a run or a `ModelCheckpoint` holds while it writes there.

Two runs writing into one folder overwrite each other's `last.json`, checkpoints and
`best.safetensors`, and each reports the other's files as its own. `FolderLock` refuses the
second writer with the first one's process, host and start time. The lock is an advisory
`flock` on `<folder>/<name>` (POSIX), released by the kernel when its process dies, so a
file left by a killed process is known to be stale: it is reported and taken over. The file
itself names the owner (JSON) and is removed at a normal release. Only the main process of a
launch takes a lock; its other processes write under it (see `ModelCheckpoint`).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

from callbacks_kit.errors import CheckpointError, FolderInUseError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: fall back to the pid check alone
    fcntl = None  # type: ignore[assignment]  # the name is typed as the module; None marks it missing


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _describe(owner: dict[str, Any]) -> str:
    if not owner:
        return "an unknown process"
    command = owner.get("command")
    return (
        f"process {owner.get('pid')} on {owner.get('host')} (started {owner.get('started')}"
        + (f": {command}" if command else "")
        + ")"
    )


class FolderLock:
    """A lock on `folder`, held by one object of one process at a time.

    Args:
        folder: The folder to own; created if needed.
        what: How the folder is named in messages, e.g. "the checkpoint folder".
        fix: What a refused writer should do, appended to the error.
        name: The lock file's name inside the folder.
    """

    def __init__(self, folder: str | os.PathLike[str], what: str, fix: str, name: str = ".lock") -> None:
        self.path = Path(folder) / name
        self.what, self.fix = what, fix
        self.token = uuid.uuid4().hex
        self._fd: int | None = None
        self.stale: dict[str, Any] | None = None  # the owner of a stale lock taken over, if any

    @property
    def held(self) -> bool:
        """True between a successful `acquire` and `release`."""
        return self._fd is not None

    def owner(self) -> dict[str, Any]:
        """What the lock file says about its holder ({} when unreadable)."""
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def acquire(self) -> None:
        """Take the lock, or raise `FolderInUseError` naming the process that holds it.

        A lock file left by a process that no longer runs is reported (a warning) and taken over;
        a folder in the lock file's place is a `CheckpointError` naming it.
        """
        if self.held:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_dir():  # os.open would fail with a bare IsADirectoryError
            raise CheckpointError(
                f"{self.path} is a folder, where {self.what} {self.path.parent} keeps its lock file: callbacks-kit "
                f"never makes a folder there. Remove it (rmdir {self.path}, after checking what it holds) and run again"
            )
        for _ in range(20):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if not self._lock(fd):
                    raise self._refusal()
                if not self._same_file(fd):
                    continue  # released and removed between our open and our lock: try the new file
                previous = self._read_fd(fd)
                if previous.get("token") and previous.get("token") != self.token:
                    if fcntl is None and _pid_alive(int(previous.get("pid", -1))):
                        raise self._refusal(previous)
                    self.stale = previous
                    warnings.warn(
                        f"{self.what} {self.path.parent} had a stale lock of {_describe(previous)}, which no "
                        "longer runs (killed or crashed?); taking it over. Its last checkpoint is checked as usual.",
                        stacklevel=2,
                    )
                self._write_owner(fd)
                self._fd, fd = fd, -1
                return
            finally:
                if fd >= 0:
                    os.close(fd)
        raise FolderInUseError(f"could not lock {self.path}: it keeps being replaced; is another run starting?")

    def release(self) -> None:
        """Remove the lock file and release the lock (nothing when not held)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if self._same_file(fd) and self._read_fd(fd).get("token") == self.token:
                self.path.unlink(missing_ok=True)
        finally:
            os.close(fd)  # closing drops the flock

    # ------------------------------------------------------------------------------ helpers
    def _lock(self, fd: int) -> bool:
        if fcntl is None:
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _same_file(self, fd: int) -> bool:
        try:
            on_disk = os.stat(self.path)
        except FileNotFoundError:
            return False
        held = os.fstat(fd)
        return (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino)

    @staticmethod
    def _read_fd(fd: int) -> dict[str, Any]:
        os.lseek(fd, 0, os.SEEK_SET)
        raw = b""
        while chunk := os.read(fd, 65536):
            raw += chunk
        try:
            data = json.loads(raw.decode() or "{}")
        except (UnicodeDecodeError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write_owner(self, fd: int) -> None:
        owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:300],
            "token": self.token,
        }
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(owner).encode())
        os.fsync(fd)

    def _refusal(self, owner: dict[str, Any] | None = None) -> FolderInUseError:
        owner = self.owner() if owner is None else owner
        who = _describe(owner)
        if owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
            who = "another writer in this same process (two ModelCheckpoints on one folder?)"
        return FolderInUseError(
            f"{self.what} {self.path.parent} is in use by {who}; two writers would overwrite each other's "
            f"checkpoints and last.json. {self.fix} (if that process is gone, delete {self.path})"
        )

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
