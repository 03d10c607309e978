"""What a kill leaves in a checkpoint folder, found and put right when the next run starts.

A save commits its folder by one rename, then replaces `last.json`, then `best.safetensors`,
then prunes (`store`). A kill between two of those steps leaves, besides the checkpoint
`last.json` names: `.tmp-*` and `.trash-*` entries (`clean_leftovers`); a committed folder
newer than that checkpoint, or an older one its save was pruning, which the run's record
does not keep (`unkept_folders`); a `best.safetensors` that still holds an earlier best
model (`file_matches` tells). `ModelCheckpoint` repairs all three at fit start, on the main
process, holding the folder's lock.
"""

from __future__ import annotations

import shutil
from collections.abc import Collection, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from callbacks_kit.checkpoint.digest import CHUNK, checksum_matches
from callbacks_kit.checkpoint.format import TMP_PREFIX, TRASH_PREFIX
from callbacks_kit.checkpoint.store import list_checkpoints, read_pointer


def clean_leftovers(dirpath: Path) -> list[str]:
    """Remove `.tmp-*` and `.trash-*` entries that a killed save or prune left; returns their names."""
    removed = []
    for entry in sorted(dirpath.glob(".*")):
        if entry.name.startswith((TMP_PREFIX, TRASH_PREFIX)):
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink(missing_ok=True)
            removed.append(entry.name)
    return removed


def _written(meta: Mapping[str, Any]) -> tuple[datetime, int] | None:
    """When a checkpoint was committed (meta.json's `created`, to the second), then its step: an order of saves."""
    try:
        return datetime.strptime(str(meta["created"]), "%Y-%m-%dT%H:%M:%S%z"), int(meta["global_step"])
    except (KeyError, ValueError, TypeError):
        return None


def unkept_folders(dirpath: Path, last: str, keep: Collection[str], stale: Collection[str]) -> list[str]:
    """The committed folders a kill left beside `last` that a run resumed from it does not keep.

    Those committed after `last` (a kill after the rename, before `last.json` named the
    folder, or a failed `last.json` update) and those the save of `last` was pruning (`stale`:
    a kill before the prune). Only when `last.json` names `last` or is missing: a run resumed
    from an older checkpoint than `last.json`'s leaves the newer folders, another line of
    the run, as they are. Never a folder in `keep` (the record's best and last).
    """
    if read_pointer(dirpath) not in (None, last):
        return []
    found = dict(list_checkpoints(dirpath))
    if last not in found:
        return []
    mark = _written(found[last])

    def newer(meta: Mapping[str, Any]) -> bool:
        when = _written(meta)
        return mark is not None and when is not None and when > mark

    return [name for name, meta in found.items() if name not in keep and (name in stale or newer(meta))]


def file_matches(path: Path, expected: Mapping[str, Any]) -> bool:
    """Whether the file `path` exists with the size and checksum of `expected` (meta.json's form)."""
    try:
        if path.stat().st_size != expected["bytes"]:
            return False
        with open(path, "rb") as f:
            return checksum_matches(expected, iter(lambda: f.read(CHUNK), b""))
    except OSError:
        return False
