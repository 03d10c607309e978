"""ImageFolder trees: train and validation datasets, with unreadable images checked for and skipped."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset
from torchvision import datasets
from torchvision.transforms import v2

from callbacks_kit.choices import CROP_RATIO
from callbacks_kit.data.images import check_image, load_image
from callbacks_kit.data.transforms import eval_transform, train_transform
from callbacks_kit.errors import DataError


def image_folder_datasets(
    root: str | os.PathLike[str],
    image_size: int = 224,
    val_split: float | None = None,
    seed: int = 0,
    augment: str = "basic",
    flip: bool = True,
    crop_ratio: float = CROP_RATIO,
) -> tuple[Dataset, Dataset, list[str]]:
    """Train and validation datasets from an ImageFolder tree.

    `root/train/<class>/*.jpg` and `root/val/<class>/*.jpg` when both exist; otherwise
    `root/<class>/*.jpg` split at random (by `seed`) with `val_split` of it for validation.
    Training images get `train_transform(image_size, augment, flip, crop_ratio)`; validation
    images are only resized, centre-cropped (`eval_transform(image_size, crop_ratio)`) and normalised.

    Returns:
        `(train_dataset, val_dataset, class_names)`.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"--data {root}: no such folder; give a folder with train/ and val/ or class subfolders")
    train_dir, val_dir = root / "train", root / "val"
    if train_dir.is_dir() and val_dir.is_dir():
        train = _image_folder(train_dir, train_transform(image_size, augment, flip, crop_ratio))
        val = _image_folder(val_dir, eval_transform(image_size, crop_ratio))
        drop_unreadable(train, val)
        if val_split is not None:
            warnings.warn(f"--val-split {val_split} is ignored: {root} has its own val/ folder", stacklevel=2)
        if train.classes != val.classes:
            raise DataError(
                f"{train_dir} and {val_dir} have different classes: {train.classes} vs {val.classes}; "
                "every class needs a folder in both"
            )
        _check_classes(train.classes, train_dir)
        return train, val, list(train.classes)
    for have, missing in ((train_dir, val_dir), (val_dir, train_dir)):
        if have.is_dir():
            raise DataError(
                f"{root} has {have.name}/ but no {missing.name}/: add {missing} with the same class folders, "
                f"or put the class folders directly in {root} to hold out --val-split of them"
            )
    split = 0.2 if val_split is None else val_split
    if not 0 < split < 1:
        raise DataError(f"--val-split {split} must be between 0 and 1 (exclusive)")
    train_all = _image_folder(root, train_transform(image_size, augment, flip, crop_ratio))
    val_all = _image_folder(root, eval_transform(image_size, crop_ratio))
    _check_classes(train_all.classes, root)
    drop_unreadable(train_all, val_all)
    order = torch.randperm(len(train_all), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = max(1, round(len(order) * split))
    if n_val >= len(order):
        raise DataError(f"{root} has {len(order)} images: too few to hold out {split:.0%} for validation")
    return Subset(train_all, order[n_val:]), Subset(val_all, order[:n_val]), list(train_all.classes)


PROGRESS_FROM = 2000  # images: a header check of a tree this large shows a progress bar


def drop_unreadable(*folders: datasets.ImageFolder) -> list[tuple[str, str]]:
    """Check the header of every image of `folders` and drop the unreadable ones, with a warning naming each.

    Folders over the same files (the same tree with two transforms) are checked once.
    Returns `(path, reason)` for each dropped file. Damage past the header (a truncated
    JPEG) is caught at load time instead: see `CheckedImageFolder`.
    """
    paths = sorted({path for folder in folders for path, _ in folder.samples})
    bad: dict[str, str] = {}
    if paths:
        from tqdm.auto import tqdm

        bar = tqdm(paths, desc="checking images", unit="img", disable=len(paths) < PROGRESS_FROM, leave=False)
        for path in bar:
            reason = check_image(path)
            if reason is not None:
                bad[path] = reason
    if bad:
        for folder in folders:
            folder.samples = [(p, t) for p, t in folder.samples if p not in bad]
            folder.imgs = folder.samples
            folder.targets = [t for _, t in folder.samples]
        listed = "; ".join(f"{path} ({reason})" for path, reason in list(bad.items())[:20])
        more = f" and {len(bad) - 20} more" if len(bad) > 20 else ""
        warnings.warn(
            f"skipping {len(bad)} unreadable image(s) of {len(paths)}: {listed}{more}. Remove or replace them.",
            stacklevel=2,
        )
        if not any(folder.samples for folder in folders):
            raise DataError(f"none of the {len(paths)} images can be read; check the files of the folder")
    return list(bad.items())


class CheckedImageFolder(datasets.ImageFolder):
    """An ImageFolder that loads every PIL mode correctly and never fails a run on one bad file.

    A file that fails to load (damage the header check cannot see) is replaced by the next
    readable sample, with a warning naming it; `skipped` counts them in this process.
    """

    skipped = 0

    def __init__(self, root: str, transform: Any = None) -> None:
        super().__init__(root, transform=transform, loader=load_image)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        for attempt in range(min(len(self.samples), 50)):
            i = (index + attempt) % len(self.samples)
            try:
                return super().__getitem__(i)
            except Exception as exc:  # noqa: PERF203 - a bad file is rare, and must not end the run
                CheckedImageFolder.skipped += 1
                warnings.warn(
                    f"skipped unreadable image {self.samples[i][0]} ({type(exc).__name__}: {exc}); "
                    f"{CheckedImageFolder.skipped} skipped so far in this process. Remove or replace it.",
                    stacklevel=2,
                )
        raise DataError(f"{self.root}: 50 images in a row cannot be loaded; check the files")


def _check_classes(classes: Sequence[str], path: Path) -> None:
    if len(classes) < 2:
        raise DataError(
            f"{path} has {len(classes)} class folder(s) ({', '.join(classes) or 'none'}): a classifier needs at "
            "least 2, or every prediction is right. Add one folder of images per class"
        )


def _image_folder(path: Path, transform: v2.Compose) -> CheckedImageFolder:
    try:
        return CheckedImageFolder(str(path), transform=transform)
    except FileNotFoundError as exc:
        raise DataError(
            f"{path} is not an ImageFolder tree ({exc}); expected one subfolder per class holding images "
            "(.jpg, .png, ...), or train/ and val/ folders that each hold such subfolders"
        ) from exc
