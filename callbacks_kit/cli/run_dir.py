"""The run folder every process of a command writes to: the main process picks it and locks it, the others follow."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from accelerate import PartialState
from accelerate.utils import broadcast_object_list

from callbacks_kit.callbacks.tensorboard_logger import default_log_dir
from callbacks_kit.errors import CallbacksKitError, CLIError, FolderInUseError
from callbacks_kit.folder_lock import FolderLock


def pick_run_dir(requested: str | None, state: PartialState) -> str:
    """One run folder for all processes: the main process picks it, the others receive it."""
    chosen: list[Any] = [requested or (default_log_dir() if state.is_main_process else None)]  # then the main's str
    if state.num_processes > 1:
        broadcast_object_list(chosen, from_process=0)
    return chosen[0]


@contextlib.contextmanager
def lock_run(run_dir: str, state: PartialState) -> Iterator[None]:
    """Hold the run folder's lock: the main process takes it; every process raises if it is refused."""
    lock = FolderLock(run_dir, "the run folder", "Wait for that run to end, or pass another --log-dir.")
    box: list[tuple[bool, str] | None] = [None]
    if state.is_main_process:
        try:
            lock.acquire()
        except CallbacksKitError as exc:
            box[0] = (isinstance(exc, FolderInUseError), str(exc))
        except OSError as exc:
            where = f": {exc.filename}" if exc.filename and str(exc.filename) != str(run_dir) else ""
            box[0] = (
                False,
                f"--log-dir {run_dir} cannot hold a run ({exc.strerror or exc}{where}); pick a folder you can write to",
            )
    if state.num_processes > 1:
        broadcast_object_list(box, from_process=0)
    if box[0]:
        in_use, message = box[0]
        raise FolderInUseError(message) if in_use else CLIError(message)
    try:
        yield
    finally:
        lock.release()  # held by the main process alone; a no-op on the others


def tensorboard_command(run_dir: str | os.PathLike[str]) -> str:
    """`tensorboard --logdir RUN` as a command that runs where it is printed: TensorBoard beside this Python.

    A virtual environment's scripts are on PATH only once it is activated, and the README's
    set-up never activates it: unless `tensorboard` on PATH is the one installed with this
    interpreter, the command names it by path (relative to the current folder when inside it),
    or runs it as `python -m tensorboard.main` when there is no script.
    """
    script = Path(sys.executable).parent / ("tensorboard.exe" if os.name == "nt" else "tensorboard")
    on_path = shutil.which("tensorboard")
    if on_path and script.is_file() and Path(on_path).resolve() == script.resolve():
        program = "tensorboard"
    elif script.is_file():
        here = Path.cwd()
        near = script.relative_to(here) if script.is_relative_to(here) else script
        program = shlex.quote(str(near) if len(near.parts) > 1 else f"./{near}")  # a bare name is looked up on PATH
    else:
        program = f"{shlex.quote(sys.executable)} -m tensorboard.main"
    return f"{program} --logdir {shlex.quote(str(run_dir))}"
