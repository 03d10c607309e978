"""Images labelled by a CSV file: a column of relative paths, one of labels, and an optional `split` column."""

from __future__ import annotations

import codecs
import csv
import io
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from callbacks_kit.choices import CROP_RATIO
from callbacks_kit.data.folders import drop_unreadable
from callbacks_kit.data.images import is_image_name, load_image
from callbacks_kit.data.transforms import eval_transform, train_transform
from callbacks_kit.errors import DataError

SPLIT_COLUMN = "split"
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
# Label columns found by name (any case), before position.
LABEL_NAMES = ("label", "class", "target", "category")
INTEGER = re.compile(r"-?[0-9]+")  # ASCII digits only: "²" is a digit to str.isdigit, not to int()


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

    The file is UTF-8 (with or without a byte-order mark) or UTF-16 with one. The label
    column is `label_column`, else the one column named `label`, `class`, `target` or
    `category` (any case), else the one column left besides the paths and `split`; the path
    column is `path_column`, else the first other column. Labels may be names or integers;
    integers are classes by value (`1` and `01` are one class, named `1`) and sorted by it,
    names sorted as text. Paths are normalised (`./x.png` is `x.png`) before any check.

    Raises:
        DataError: the file or folder is missing; the text is not UTF-8 or UTF-16; the header
            is missing (the first line names an image) or has fewer than two columns; a row
            has more or fewer fields than the header; a column is unknown, or the label column
            is ambiguous (`--label-column` chooses); a label is empty; a path is listed twice
            or has no file; a `split` value is unknown; or there are fewer than two classes.
    """
    csv_file, images = Path(csv_file), Path(images)
    if not csv_file.is_file():
        raise DataError(f"--labels {csv_file}: no such file; give a CSV of image paths and labels")
    if not images.is_dir():
        raise DataError(f"--images {images}: no such folder; give the folder the CSV's paths are relative to")
    header, rows = _read_rows(csv_file, images)
    path_column, label_column = _columns(csv_file, header, path_column, label_column)
    path_at, label_at = header.index(path_column), header.index(label_column)
    empty = [line for line, row in rows if not row[label_at].strip()]
    if empty:
        raise DataError(
            f"{csv_file}: empty label on line(s) {', '.join(map(str, empty[:10]))}; fill them in or remove those rows"
        )
    written = [row[path_at].strip() for _, row in rows]
    names = [os.path.normpath(name) if name else "" for name in written]
    first: dict[str, int] = {}
    duplicates = []
    for (line, _), name, raw in zip(rows, names, written, strict=True):
        if name in first and name:
            duplicates.append(f"{raw} (line {line}, the image of line {first[name]})")
        first.setdefault(name, line)
    if duplicates:
        raise DataError(
            f"{csv_file} lists the same image more than once: {'; '.join(duplicates[:5])}; keep one row per image"
        )
    missing = [raw or f"(empty, line {line})" for (line, _), name, raw in zip(rows, names, written, strict=True)
               if not name or not (images / name).is_file()]  # fmt: skip
    if missing:
        raise DataError(
            f"{len(missing)} image(s) of {csv_file} are not in {images}: {', '.join(missing[:5])}; paths are "
            "relative to --images: fix the paths or remove those rows"
        )
    labels = [row[label_at].strip() for _, row in rows]
    numeric = all(INTEGER.fullmatch(label) for label in labels)
    if numeric:
        labels = [str(int(label)) for label in labels]  # "01" and "1" are one class
    classes = sorted(set(labels), key=int) if numeric else sorted(set(labels))
    index = {name: i for i, name in enumerate(classes)}
    splits = None
    if SPLIT_COLUMN in header and SPLIT_COLUMN not in (path_column, label_column):
        split_at = header.index(SPLIT_COLUMN)
        raw_splits = [row[split_at].strip().lower() for _, row in rows]
        unknown = sorted({value for value in raw_splits if value not in SPLIT_NAMES})
        if unknown:
            raise DataError(
                f"{csv_file}: unknown {SPLIT_COLUMN!r} value(s) {', '.join(map(repr, unknown))}; use train, val or test"
            )
        splits = [SPLIT_NAMES[value] for value in raw_splits]
    if len(classes) < 2:
        raise DataError(f"{csv_file} has {len(classes)} class ({', '.join(classes)}): a classifier needs at least 2")
    return LabelTable([str(images / n) for n in names], [index[label] for label in labels], classes, splits)


def _decode(csv_file: Path) -> str:
    """The CSV's text: UTF-8 (a byte-order mark is dropped), or UTF-16 with its byte-order mark."""
    data = csv_file.read_bytes()
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise DataError(f"{csv_file} starts as UTF-16 text but is not ({exc.reason}); save it as UTF-8") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{csv_file} is not UTF-8 text (byte {exc.start} is {data[exc.start : exc.start + 1]!r}: another "
            "encoding); save it as UTF-8 (in Excel: CSV UTF-8) and run again"
        ) from None
    if "\x00" in text:
        raise DataError(f"{csv_file} holds NUL characters: UTF-16 without a byte-order mark? Save it as UTF-8")
    return text


def _read_rows(csv_file: Path, images: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header's column names, and every non-blank row with its line number, all of the header's length."""
    reader = csv.reader(io.StringIO(_decode(csv_file), newline=""))
    rows = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    if not rows:
        raise DataError(f"{csv_file} is empty; give a header row (e.g. path,label) and one row per image")
    header = [name.strip() for name in rows[0][1]]
    looks_like_data = [name for name in header if is_image_name(name) or (name and (images / name).is_file())]
    if looks_like_data:
        raise DataError(
            f"{csv_file} has no header row: its first line names the image {looks_like_data[0]!r} and would be "
            "read as column names, losing that image. Add a first line naming the columns, e.g. path,label"
        )
    if len(header) < 2:
        separator = next((sep for sep in (";", "\t", "|") if sep in rows[0][1][0]), None) if header else None
        hint = f" (its columns are separated by {separator!r}: save it with commas)" if separator else ""
        raise DataError(
            f"{csv_file} needs a header row and at least two columns (paths and labels){hint}, with a row per image"
        )
    unnamed = [str(i + 1) for i, name in enumerate(header) if not name]
    repeated = sorted({name for name in header if name and header.count(name) > 1})
    if unnamed or repeated:
        raise DataError(
            f"{csv_file}: every column needs a name of its own in the header (unnamed: column "
            f"{', '.join(unnamed) or '-'}; repeated: {', '.join(repeated) or '-'}); fix the first line"
        )
    ragged = [f"line {line} has {len(row)}" for line, row in rows[1:] if len(row) != len(header)]
    if ragged:
        raise DataError(
            f"{csv_file}: the header has {len(header)} fields, and {', '.join(ragged[:5])} (an unquoted comma in a "
            'path or label? quote it, "a,b.png"); fix those rows'
        )
    if len(rows) < 2:
        raise DataError(f"{csv_file} has a header but no rows; give one row per image")
    return header, rows[1:]


def _columns(csv_file: Path, header: list[str], path_column: str | None, label_column: str | None) -> tuple[str, str]:
    """The path and label columns: those given, else chosen by name, refusing an ambiguous choice."""
    for flag, column in (("--path-column", path_column), ("--label-column", label_column)):
        if column is not None and column not in header:
            raise DataError(f"{csv_file} has no column {column!r} ({flag}); its columns: {', '.join(header)}")
    if label_column is None:
        named = [name for name in header if name.lower() in LABEL_NAMES and name != path_column]
        others = [name for name in header if name not in (path_column or header[0], SPLIT_COLUMN) and name not in named]
        if len(named) > 1 or (not named and len(others) != 1):
            found = (
                f"{len(named)} label columns ({', '.join(named)})"
                if named
                else (f"no column named {', '.join(LABEL_NAMES)}, and {len(others)} others ({', '.join(others)})")
            )
            raise DataError(f"{csv_file} has {found}: choose the column of labels with --label-column NAME")
        label_column = named[0] if named else others[0]
    if path_column is None:
        path_column = next(name for name in header if name not in (label_column, SPLIT_COLUMN))
    if path_column == label_column:
        raise DataError(
            f"{csv_file}: --path-column and --label-column both name {path_column!r}; the paths and the labels are "
            "two columns"
        )
    return path_column, label_column


class CsvImageDataset(Dataset):
    """Images listed in a labels CSV, as `(image, class_index)`; class names from the CSV.

    Args:
        csv_file: The CSV (header row; a column of paths relative to `images`, one of labels).
        images: The folder the paths are relative to.
        transform: Applied to each RGB PIL image (e.g. `callbacks_kit.data.eval_transform(224)`).
        path_column: Column of image paths (default: the first that is not the labels or `split`).
        label_column: Column of labels, names or integers (default: the column named `label`,
            `class`, `target` or `category`, else the one other column; see `read_labels`).
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
