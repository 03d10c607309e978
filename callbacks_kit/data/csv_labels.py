"""Images labelled by a CSV file: a column of relative paths, one of labels, and an optional `split` column."""

from __future__ import annotations

import csv
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from callbacks_kit.choices import CROP_RATIO
from callbacks_kit.data.folders import drop_unreadable
from callbacks_kit.data.images import load_image
from callbacks_kit.data.transforms import eval_transform, train_transform
from callbacks_kit.errors import DataError

SPLIT_COLUMN = "split"
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


@dataclass(frozen=True)
class LabelTable:
    """The checked rows of a labels CSV: absolute image paths, label indices, class names, and splits if given."""

    paths: list[str]
    targets: list[int]
    classes: list[str]
    splits: list[str] | None


def read_labels(
    csv_file: str | os.PathLike[str],
    images: str | os.PathLike[str],
    path_column: str | None = None,
    label_column: str | None = None,
) -> LabelTable:
    """Read and check a labels CSV whose paths are relative to `images`.

    Labels may be names or integers; the classes are the sorted names (integers sorted by
    value). Defaults: the path column is the first, the label column `label` or else the second.

    Raises:
        DataError: the file or folder is missing, a column is unknown, a label is empty, a
            path is listed twice or has no file, a `split` value is unknown, or there are
            fewer than two classes.
    """
    csv_file, images = Path(csv_file), Path(images)
    if not csv_file.is_file():
        raise DataError(f"--labels {csv_file}: no such file; give a CSV of image paths and labels")
    if not images.is_dir():
        raise DataError(f"--images {images}: no such folder; give the folder the CSV's paths are relative to")
    with open(csv_file, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
        columns = list(rows[0].keys()) if rows else []
    if len(columns) < 2 or not rows:
        raise DataError(f"{csv_file} needs a header row and at least two columns (paths and labels) with rows")
    path_column = path_column or columns[0]
    label_column = label_column or ("label" if "label" in columns else columns[1])
    for flag, column in (("--path-column", path_column), ("--label-column", label_column)):
        if column not in columns:
            raise DataError(f"{csv_file} has no column {column!r} ({flag}); its columns: {', '.join(columns)}")
    empty = [i + 2 for i, row in enumerate(rows) if not (row.get(label_column) or "").strip()]
    if empty:
        raise DataError(
            f"{csv_file}: empty label on line(s) {', '.join(map(str, empty[:10]))}; fill them in or remove those rows"
        )
    names = [(row.get(path_column) or "").strip() for row in rows]
    duplicates = [name for name, count in Counter(names).items() if count > 1]
    if duplicates:
        raise DataError(
            f"{csv_file} lists the same image more than once: {', '.join(duplicates[:5])}; keep one row per image"
        )
    missing = [name for name in names if not name or not (images / name).is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} image(s) of {csv_file} are not in {images}: {', '.join(missing[:5])}; paths are "
            "relative to --images: fix the paths or remove those rows"
        )
    labels = [row[label_column].strip() for row in rows]
    numeric = all(label.lstrip("-").isdigit() for label in labels)
    classes = sorted(set(labels), key=int) if numeric else sorted(set(labels))
    index = {name: i for i, name in enumerate(classes)}
    splits = None
    if SPLIT_COLUMN in columns and SPLIT_COLUMN not in (path_column, label_column):
        raw = [(row.get(SPLIT_COLUMN) or "").strip().lower() for row in rows]
        unknown = sorted({value for value in raw if value not in SPLIT_NAMES})
        if unknown:
            raise DataError(
                f"{csv_file}: unknown {SPLIT_COLUMN!r} value(s) {', '.join(map(repr, unknown))}; use train, val or test"
            )
        splits = [SPLIT_NAMES[value] for value in raw]
    if len(classes) < 2:
        raise DataError(f"{csv_file} has {len(classes)} class ({', '.join(classes)}): a classifier needs at least 2")
    return LabelTable([str(images / n) for n in names], [index[label] for label in labels], classes, splits)


class CsvImageDataset(Dataset):
    """Images listed in a labels CSV, as `(image, class_index)`; class names from the CSV.

    Args:
        csv_file: The CSV (header row; a column of paths relative to `images`, one of labels).
        images: The folder the paths are relative to.
        transform: Applied to each RGB PIL image (e.g. `callbacks_kit.data.eval_transform(224)`).
        path_column: Column of image paths (default: the first).
        label_column: Column of labels, names or integers (default: `label`, else the second).
        table: Rows already read with `read_labels` (the other file arguments are then unused).
        indices: Keep only these rows (a split).
    """

    def __init__(
        self,
        csv_file: str | os.PathLike[str] | None = None,
        images: str | os.PathLike[str] | None = None,
        transform: Any = None,
        path_column: str | None = None,
        label_column: str | None = None,
        table: LabelTable | None = None,
        indices: Sequence[int] | None = None,
    ) -> None:
        if table is None:
            if csv_file is None or images is None:
                raise DataError("CsvImageDataset needs csv_file and images (or a table from read_labels)")
            table = read_labels(csv_file, images, path_column, label_column)
        rows = range(len(table.paths)) if indices is None else indices
        self.classes = list(table.classes)
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        self.samples = [(table.paths[i], table.targets[i]) for i in rows]
        self.imgs = self.samples
        self.targets = [t for _, t in self.samples]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, target = self.samples[index]
        image = load_image(path)
        return (self.transform(image) if self.transform is not None else image), target


def csv_datasets(
    csv_file: str | os.PathLike[str],
    images: str | os.PathLike[str],
    image_size: int = 224,
    val_split: float | None = None,
    seed: int = 0,
    path_column: str | None = None,
    label_column: str | None = None,
    augment: str = "basic",
    flip: bool = True,
    crop_ratio: float = CROP_RATIO,
) -> tuple[CsvImageDataset, CsvImageDataset, list[str]]:
    """Train and validation datasets from a labels CSV, with the transforms of `image_folder_datasets`.

    `augment`, `flip` and `crop_ratio` choose the transforms as there (`data.train_transform`).

    The CSV's `split` column decides when present (train, val; test rows are left out);
    otherwise `val_split` (default 0.2) of the rows is held out at random by `seed`.

    Raises:
        DataError: see `read_labels`; also a class with one image, a split with no images,
            or `val_split` together with a `split` column.
    """
    table = read_labels(csv_file, images, path_column, label_column)
    counts = Counter(table.targets)
    single = [table.classes[t] for t, n in sorted(counts.items()) if n < 2]
    if single:
        raise DataError(
            f"{csv_file}: class(es) {', '.join(single)} have a single image; a class needs at least 2 (one to train, "
            "one to validate): add images or remove those rows"
        )
    if table.splits is not None:
        if val_split is not None:
            raise DataError(f"{csv_file} has a {SPLIT_COLUMN!r} column, which decides the split: drop --val-split")
        train_rows = [i for i, s in enumerate(table.splits) if s == "train"]
        val_rows = [i for i, s in enumerate(table.splits) if s == "val"]
        if not train_rows or not val_rows:
            raise DataError(f"{csv_file}: the {SPLIT_COLUMN!r} column needs rows for both train and val")
    else:
        split = 0.2 if val_split is None else val_split
        if not 0 < split < 1:
            raise DataError(f"--val-split {split} must be between 0 and 1 (exclusive)")
        order = torch.randperm(len(table.paths), generator=torch.Generator().manual_seed(seed)).tolist()
        n_val = max(1, round(len(order) * split))
        if n_val >= len(order):
            raise DataError(f"{csv_file} has {len(order)} images: too few to hold out {split:.0%} for validation")
        train_rows, val_rows = order[n_val:], order[:n_val]
    train_steps = train_transform(image_size, augment, flip, crop_ratio)
    train = CsvImageDataset(table=table, indices=train_rows, transform=train_steps)
    val = CsvImageDataset(table=table, indices=val_rows, transform=eval_transform(image_size, crop_ratio))
    drop_unreadable(train, val)
    return train, val, list(table.classes)
