"""Finding the images a user names (files, folders, globs), loading them for a model, and where to run it."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from torchvision.datasets.folder import IMG_EXTENSIONS

from callbacks_kit.data import check_image, load_image
from callbacks_kit.errors import DataError


def best_device(cpu: bool = False) -> torch.device:
    """The best accelerator present (CUDA, then Apple MPS), else the CPU; `cpu=True` forces the CPU."""
    if not cpu and torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if not cpu and mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def is_image_name(path: str | os.PathLike[str]) -> bool:
    """Whether the file name has one of torchvision's image extensions."""
    return str(path).lower().endswith(IMG_EXTENSIONS)


def expand_images(sources: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """The image files that `sources` name: files as given, folders searched recursively, globs expanded.

    Folder and glob results keep only files with an image extension, in sorted order;
    duplicates are listed once.

    Raises:
        DataError: a source that is no file or folder and matches nothing, or no image at all.
    """
    found: dict[Path, None] = {}
    for source in sources:
        path = Path(source)
        if path.is_file():
            found[path] = None
        elif path.is_dir():
            found.update(dict.fromkeys(sorted(p for p in path.rglob("*") if p.is_file() and is_image_name(p))))
        elif glob.has_magic(str(source)):
            matches = sorted(Path(p) for p in glob.glob(str(source), recursive=True))
            images = [p for p in matches if p.is_file() and is_image_name(p)]
            if not images:
                raise DataError(f"{source} matches no image file; check the pattern (quote it so the shell passes it)")
            found.update(dict.fromkeys(images))
        else:
            raise DataError(f"{source}: no such file or folder; give image files, folders of images or globs")
    if not found:
        raise DataError(f"no image files in {', '.join(map(str, sources))} (extensions: {', '.join(IMG_EXTENSIONS)})")
    return list(found)


def read_image(path: str | os.PathLike[str]) -> tuple[object | None, str | None]:
    """`(image, None)`: the file as 8-bit RGB whatever its mode (grey, RGBA, 16-bit, palette); or `(None, why)`."""
    reason = check_image(path)
    if reason is not None:
        return None, reason
    try:
        return load_image(path), None
    except Exception as exc:  # PIL raises many kinds for damaged files
        return None, f"{type(exc).__name__}: {exc}"
