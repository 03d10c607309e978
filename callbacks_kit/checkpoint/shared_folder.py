"""Whether every process sees the same checkpoint folder, checked once at fit start.

A save is one folder that every process writes its own file into and the main process
commits after reading the others' back; a resume reads it on every process. So with several
processes the folder must be one folder for all of them: one machine, or a filesystem every
node mounts (NFS, Lustre, GPFS...). On nodes without one, or with a per-node folder, the
first save would fail after an epoch of training, and a resume would start some processes
fresh and others from the checkpoint. The main process writes a file with a random token
into the folder; every other process must read that token there, or every process raises
the same `CheckpointError` before anything is trained.
"""

from __future__ import annotations

import secrets
import socket
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object

from callbacks_kit.checkpoint.format import TMP_PREFIX
from callbacks_kit.errors import CheckpointError

# How long a process looks for the main process's file: a network filesystem may show a new
# file a moment late. Only a folder that is not shared waits this long, then fails.
PATIENCE_S = 5.0


def _sees(path: Path, token: str, patience: float) -> bool:
    """True when `path` holds `token`, looking again for up to `patience` seconds."""
    deadline = time.monotonic() + patience
    while True:
        try:
            if path.read_text() == token:
                return True
        except OSError:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


def check_shared_folders(
    accelerator: Accelerator, folders: Iterable[Path | None], patience: float = PATIENCE_S
) -> None:
    """Refuse checkpoint folders that not every process sees (one collective round per folder; none in one process).

    Every process must call it, with the folders of its own callbacks (None entries are
    skipped). A folder the main process cannot write to is left to `ModelCheckpoint`'s own
    check, which says so.

    Raises:
        CheckpointError: on every process, naming the folder and the processes that do not see it.
    """
    if accelerator.num_processes == 1:
        return
    for folder in dict.fromkeys(Path(f) for f in folders if f is not None):
        probe = folder / f"{TMP_PREFIX}shared-{secrets.token_hex(8)}"
        box: list[Any] = [probe.name, secrets.token_hex(16), str(folder), socket.gethostname()]
        if accelerator.is_main_process:
            try:
                folder.mkdir(parents=True, exist_ok=True)
                probe.write_text(box[1])
            except OSError:
                box[0] = None
        broadcast_object_list(box, from_process=0)  # the main process's file name, token, folder and host
        name, token, main_folder, main_host = box
        missing = None
        if name is not None and not accelerator.is_main_process and not _sees(folder / name, token, patience):
            missing = f"process {accelerator.process_index} on {socket.gethostname()} does not see it in {folder}"
        missing_anywhere = [m for m in gather_object([missing]) if m]
        if accelerator.is_main_process and name is not None:
            (folder / name).unlink(missing_ok=True)
        if missing_anywhere:
            raise CheckpointError(
                f"the checkpoint folder {folder} is not shared by all processes: process 0 on {main_host} wrote "
                f"{name} into {main_folder} and {'; '.join(missing_anywhere)}. All processes must see one checkpoint "
                "folder, on a shared filesystem that every node mounts at the same path (NFS, Lustre...): pass such "
                "a folder as --checkpoint-dir or --log-dir (ModelCheckpoint(dirpath=...)); see docs/scaling.md"
            )
