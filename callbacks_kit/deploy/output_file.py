"""Checking where a command will write its file before it does any work: predict's --output, export's --output.

A folder given as the file, a file in the way of its folder, a place without write permission
(or on a read-only file system), or an existing file without --overwrite are refused in one
line naming the flag, before a model is loaded or an image is read. Folders that do not exist
yet are made when the file is written.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from callbacks_kit.errors import DeployError


def check_output_file(
    path: str | os.PathLike[str],
    flag: str = "--output",
    overwrite: bool = True,
    suffixes: Sequence[str] = (),
    example: str = "",
) -> Path:
    """Refuse an output file that cannot be written; returns it as a `Path`.

    Args:
        path: The file to write.
        flag: How the path is named in messages.
        overwrite: Whether an existing file may be replaced.
        suffixes: The accepted extensions (lower case, with the dot); empty: any.
        example: A file name to suggest inside a folder given as `path`.

    Raises:
        DeployError: another extension, a folder, an existing file without `overwrite`, a file
            where a folder of the path should be, or a folder that cannot be written.
    """
    path = Path(path)
    if suffixes and path.suffix.lower() not in suffixes:
        raise DeployError(f"{flag} {path}: give a {' or '.join(suffixes)} file name")
    if path.is_dir():
        name = example or f"name{suffixes[0] if suffixes else ''}"
        raise DeployError(f"{flag} {path} is a folder; give the name of a file to write, e.g. {path / name}")
    if path.exists() and not overwrite:
        raise DeployError(f"{path} exists; pass another {flag}, or --overwrite to replace it")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:  # the folders still to be made are made at writing
        folder = folder.parent
    if not folder.is_dir():
        raise DeployError(f"{flag} {path}: {folder} is a file, not a folder; choose another place for the file")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".callbacks-kit-write-test-"):
            pass
    except OSError as exc:
        raise DeployError(
            f"{flag} {path}: cannot write into {folder} ({exc.strerror or exc}); choose a folder you can write to"
        ) from exc
    return path
