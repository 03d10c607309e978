"""Image files: finding those a user names (files, folders, globs), checking their headers, loading them as RGB."""

from __future__ import annotations

import glob
import os
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS

from callbacks_kit.errors import DataError


def load_image(path: str | os.PathLike[str]) -> Image.Image:
    """An image file as 8-bit RGB, whatever its PIL mode.

    PIL's `convert("RGB")` clips 16-bit and 32-bit greyscale ("I;16", "I") and float ("F")
    images to 255, so they come out white; these are scaled to 8 bits first.
    """
    with open(path, "rb") as f:
        image: Image.Image = Image.open(f)
        image.load()
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        array = np.asarray(image, dtype=np.float64)
        if image.mode == "F":
            top = 1.0 if array.size and np.nanmax(array) <= 1.0 else 255.0
        else:
            top = 65535.0 if image.mode.startswith("I;16") or (array.size and array.max() > 255) else 255.0
        array = np.nan_to_num(array / top * 255.0).clip(0, 255).round().astype(np.uint8)
        image = Image.fromarray(array)  # 2-D uint8: mode "L"
    return image.convert("RGB")


def check_image(path: str | os.PathLike[str]) -> str | None:
    """None when `path` has a readable image header (PIL's `verify`), else why not; fast, decodes nothing."""
    try:
        if os.path.getsize(path) == 0:
            return "empty file"
        with Image.open(path) as image:
            image.verify()
    except Exception as exc:  # PIL raises many kinds (OSError, SyntaxError, ValueError...)
        return f"{type(exc).__name__}: {exc}"
    return None


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


def typical_side(paths: Sequence[str | os.PathLike[str]], sample: int = 256) -> int | None:
    """The median shorter side, in pixels, of up to `sample` of the image files `paths`, evenly spaced.

    Only headers are read (PIL's `open` decodes nothing), so a large tree costs a fraction of
    a second; files that cannot be opened are left out. None when none can be.
    """
    step = max(1, len(paths) // sample)
    sides: list[int] = []
    for path in paths[::step][:sample]:
        try:
            with Image.open(path) as image:
                sides.append(min(image.size))
        except Exception:  # noqa: S112, PERF203 - an unreadable file is reported when the data loads
            continue
    return int(statistics.median_low(sides)) if sides else None


def read_image(path: str | os.PathLike[str]) -> tuple[object | None, str | None]:
    """`(image, None)`: the file as 8-bit RGB whatever its mode (grey, RGBA, 16-bit, palette); or `(None, why)`."""
    reason = check_image(path)
    if reason is not None:
        return None, reason
    try:
        return load_image(path), None
    except Exception as exc:  # PIL raises many kinds for damaged files
        return None, f"{type(exc).__name__}: {exc}"
