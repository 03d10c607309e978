"""Crash-safe checkpoint folders: an atomic save of the full training state, verified loads.

One checkpoint is one folder (its files: `callbacks_kit.checkpoint.layout`), committed by a
single atomic rename, with a meta.json giving the size and sha256 of every file. Next to the
folders: `last.json` (the newest committed folder, replaced atomically after each
commit), `best.safetensors` (see `ModelCheckpoint`), and `.tmp-*` / `.trash-*` leftovers of a
killed save or prune, which `clean_leftovers` removes. Writes go into `.tmp-<name>`, are
fsynced, then renamed; a kill at any moment leaves `last.json` pointing at a whole checkpoint.
Resuming is in `callbacks_kit.checkpoint.restore`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from accelerate.utils import broadcast_object_list, gather_object

from callbacks_kit.checkpoint.layout import FORMAT, META, VERSION, Position, main_files, rank_files
from callbacks_kit.errors import CheckpointError

if TYPE_CHECKING:
    from callbacks_kit.trainer import Trainer

POINTER, TMP_PREFIX, TRASH_PREFIX = "last.json", ".tmp-", ".trash-"
FINISHING = "updating last.json and best.safetensors or pruning"


# ------------------------------------------------------------------------------ low-level writes
def _write_file(path: Path, data: bytes) -> None:
    """Write and fsync one file (the one place bytes reach the disk; tests fail it on purpose)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


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


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that a reader sees the old file or the new one, whole."""
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}")
    try:
        _write_file(tmp, data)
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


def clean_leftovers(dirpath: Path) -> list[str]:
    """Remove `.tmp-*` and `.trash-*` entries that a killed save or prune left; returns their names."""
    removed = []
    for entry in sorted(dirpath.glob(".*")):
        if entry.name.startswith((TMP_PREFIX, TRASH_PREFIX)):
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink(missing_ok=True)
            removed.append(entry.name)
    return removed


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
def _agree(trainer: Trainer, error: str | None) -> str | None:
    """The first error of any process, known to every process (one collective)."""
    if trainer.accelerator.num_processes == 1:
        return error
    errors = gather_object([error])
    return next((e if r == 0 else f"on process {r}: {e}" for r, e in enumerate(errors) if e), None)


def _free_name(dirpath: Path, name: str) -> str:
    candidate, version = name, 0
    while (dirpath / candidate).exists():
        version += 1
        candidate = f"{name}-v{version}"
    return candidate


def _digest(data: bytes) -> dict[str, Any]:
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _commit(trainer: Trainer, tmp: Path, final: Path, position: Position, known: dict[str, Any]) -> None:
    """Describe every file in meta.json, fsync, and rename the folder into place.

    `known` holds the digests of the files this process wrote; the others' are read back.
    """
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "world_size": trainer.accelerator.num_processes,
        "epoch": position.epoch,
        "batch": position.batch,
        "global_step": trainer.state.global_step,
        "files": {p.name: known.get(p.name) or _digest(p.read_bytes()) for p in sorted(tmp.iterdir())},
    }
    _write_file(tmp / META, json.dumps(meta, indent=1).encode())
    _fsync_dir(tmp)
    os.rename(tmp, final)
    _fsync_dir(final.parent)


def _failure(dirpath: Path, name: str, doing: str, exc: BaseException) -> str:
    reason = f"{exc.strerror} ({exc.filename})" if isinstance(exc, OSError) and exc.strerror else str(exc)
    last = read_pointer(dirpath)
    if doing == FINISHING:
        what = f"checkpoint {name!r} was committed in {dirpath}, but {doing} failed: {reason}"
    else:
        what = f"could not save checkpoint {name!r} in {dirpath} while {doing}: {reason}"
    kept = f"the checkpoint {last!r} is intact and last.json points to it" if last else "no earlier checkpoint"
    fix = "Free some disk space or fix the folder" if isinstance(exc, OSError) else "Fix that"
    return f"{what}. Nothing was lost: {kept}. {fix}, then resume with resume_from='last' (--resume last)."


def save_checkpoint(
    trainer: Trainer,
    dirpath: str | os.PathLike[str],
    name: str,
    position: Position,
    *,
    should_stop: bool = False,
    metadata: dict[str, str] | None = None,
    on_name: Callable[[str], None] | None = None,
    after_commit: Callable[[Path], None] | None = None,
) -> Path:
    """Save the full training state as the folder `dirpath/name` (`-v<n>` added if taken).

    Every process must call it at the same point: each writes its RNG states, the main
    process writes the rest, then commits with one rename and runs `after_commit(folder)`
    (pointer update, pruning). A failure anywhere leaves the earlier checkpoints as they
    were and raises the same `CheckpointError` on every process.

    Args:
        trainer: The trainer whose state is saved.
        dirpath: The checkpoint directory.
        name: The folder name wanted.
        position: Where a resume continues.
        should_stop: Saved as `TrainState.should_stop` (True: a resume stops at once).
        metadata: Extra string entries for the header of model.safetensors.
        on_name: Called on every process with the final folder name before any state is
            collected, so a callback can record it in the state it saves.
        after_commit: Called on the main process with the committed folder.

    Returns:
        The committed folder.
    """
    dirpath, accelerator = Path(dirpath), trainer.accelerator
    error: str | None = None
    if accelerator.is_main_process:
        try:
            name = _free_name(dirpath, name)
            shutil.rmtree(dirpath / f"{TMP_PREFIX}{name}", ignore_errors=True)
            (dirpath / f"{TMP_PREFIX}{name}").mkdir(parents=True)
        except OSError as exc:
            error = _failure(dirpath, name, "creating its temporary folder", exc)
    if accelerator.num_processes > 1:
        box = [name, error]
        broadcast_object_list(box, from_process=0)
        name, error = box
    if error:
        raise CheckpointError(error)
    tmp, final = dirpath / f"{TMP_PREFIX}{name}", dirpath / name
    if on_name is not None:
        on_name(name)
    writing, digests = "collecting the state", {}
    try:
        files = rank_files(trainer, position)
        if accelerator.is_main_process:
            files.update(main_files(trainer, position, should_stop, metadata or {}))
        for filename, data in files.items():
            writing = f"writing {filename}"
            _write_file(tmp / filename, data)
            digests[filename] = _digest(data)
    except Exception as exc:  # any failure must reach every process, or they would wait forever
        error = _failure(dirpath, name, writing, exc)
    error = _agree(trainer, error)
    if error is None and accelerator.is_main_process:
        try:
            writing = "committing"
            _commit(trainer, tmp, final, position, digests)
            writing = FINISHING
            if after_commit is not None:
                after_commit(final)
        except Exception as exc:  # any failure must reach every process, or they would wait forever
            error = _failure(dirpath, name, writing, exc)
    error = _agree(trainer, error)
    if error:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(error)
    return final
