"""Segmentation data: image and index-mask pairs from folders, checked before training, transformed together.

A split folder holds `images/<name>.{png,jpg,...}` and `masks/<name>.png`: one single-channel
index PNG per image (mode L or P: each pixel's value is its class index, 255 marks pixels to
ignore). `SegmentationFolder` pairs them by name and checks every pair when it is built: an
image without a mask, a mask of another size than its image, a mask of another mode, a value
that is neither a class nor the ignore index, and an empty split are refused with the file
named; the scan also records which classes each image shows (`class_presence`), which the
overlay views use to pick images that cover the classes. Transforms take the image and the
mask together (torchvision v2 with `tv_tensors.Mask`), so a crop or flip moves both, and
masks are resized with nearest-neighbour interpolation.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from callbacks_kit.data.images import check_image, is_image_name, load_image
from callbacks_kit.data.normalization import IMAGENET_MEAN, IMAGENET_STD
from callbacks_kit.errors import DataError

CLASSES_FILE = "classes.txt"
MASK_MODES = ("L", "P")
SEGMENTATION_AUGMENTS = ("none", "basic")  # torchvision's policies (TrivialAugment...) refuse masks
SCAN_PROGRESS_FROM = 2000  # pairs: a scan of a split this large shows a progress bar
LISTED = 10  # names listed in an error before "and N more"

JointTransform = Callable[[Any, Any], tuple[Any, Any]]


def segmentation_train_transform(image_size: int, augment: str = "basic", flip: bool = True) -> v2.Compose:
    """The training transform of an `(image, mask)` pair: the same random crop and flip for both.

    "basic": a random resized crop to `image_size` (scale 0.5 to 1) and a horizontal flip
    (`flip=False` leaves it out); "none": resized to `image_size` square. Then the image is
    scaled to [0, 1] and normalised (ImageNet mean and std); the mask stays class indices.
    """
    if augment not in SEGMENTATION_AUGMENTS:
        raise DataError(
            f"augment={augment!r} for segmentation: choose one of {', '.join(SEGMENTATION_AUGMENTS)} (torchvision's "
            "policies such as TrivialAugment transform the image only, so its mask would no longer fit)"
        )
    if augment == "none":
        return segmentation_eval_transform(image_size)
    steps: list[v2.Transform] = [v2.RandomResizedCrop(image_size, scale=(0.5, 1.0), antialias=True)]
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose([v2.ToImage(), *steps, *_to_float()])


def segmentation_eval_transform(image_size: int) -> v2.Compose:
    """The validation transform of an `(image, mask)` pair: both resized to `image_size` square, nothing cropped.

    The whole image is measured; `predict` resizes its logits back to each image's size.
    """
    return v2.Compose([v2.ToImage(), v2.Resize((image_size, image_size), antialias=True), *_to_float()])


def _to_float() -> list[v2.Transform]:
    dtypes = {tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64, "others": None}
    return [v2.ToDtype(dtypes, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


def read_class_names(path: str | os.PathLike[str]) -> list[str]:
    """The class names of a `classes.txt`: line i names class i (a final empty line is fine)."""
    path = Path(path)
    lines = path.read_text().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    names = [line.strip() for line in lines]
    empty = [i for i, name in enumerate(names) if not name]
    if empty:
        raise DataError(f"{path}: line {empty[0] + 1} is empty; line i names class i, so every line needs a name")
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise DataError(f"{path}: {', '.join(twice)} named twice; each class needs its own name")
    if len(names) < 2:
        raise DataError(
            f"{path} names {len(names)} class(es); segmentation needs at least 2 (e.g. background and one more)"
        )
    return names


def find_pairs(split: str | os.PathLike[str]) -> list[tuple[Path, Path]]:
    """`(image, mask)` paths of a split folder (`images/` and `masks/`), paired by file name, sorted.

    Raises:
        DataError: a missing folder, two images of one name, an image without a mask, or no image.
    """
    split = Path(split)
    image_dir, mask_dir = split / "images", split / "masks"
    for folder in (image_dir, mask_dir):
        if not folder.is_dir():
            raise DataError(
                f"{split} has no {folder.name}/ folder: a segmentation split holds images/<name>.png|jpg and "
                "masks/<name>.png (one index PNG per image)"
            )
    images: dict[str, Path] = {}
    for path in sorted(p for p in image_dir.iterdir() if p.is_file() and is_image_name(p)):
        if path.stem in images:
            raise DataError(
                f"{images[path.stem].name} and {path.name} in {image_dir} share the name {path.stem!r}, so one mask "
                f"would serve both; rename one"
            )
        images[path.stem] = path
    if not images:
        raise DataError(f"{image_dir} holds no image: the split is empty; add images and their masks")
    masks = {p.stem: p for p in mask_dir.iterdir() if p.is_file() and p.suffix.lower() == ".png"}
    missing = [path.name for stem, path in images.items() if stem not in masks]
    if missing:
        raise DataError(
            f"{len(missing)} image(s) of {image_dir} have no mask in {mask_dir}: {_listed(missing)}; each image "
            f"<name>.jpg needs masks/<name>.png (remove the images without one)"
        )
    extra = sorted(name for stem, name in ((p.stem, p.name) for p in masks.values()) if stem not in images)
    if extra:
        warnings.warn(
            f"{len(extra)} mask(s) of {mask_dir} have no image and are not used: {_listed(extra)}", stacklevel=2
        )
    return [(path, masks[stem]) for stem, path in images.items()]


def _listed(names: Sequence[str]) -> str:
    shown = ", ".join(names[:LISTED])
    return shown + (f" and {len(names) - LISTED} more" if len(names) > LISTED else "")


def read_mask(path: str | os.PathLike[str]) -> np.ndarray:
    """An index PNG's values as a `(H, W)` uint8 array (mode P: the palette indices, not colours).

    Raises:
        DataError: a mask that is not a single-channel index image (mode L or P).
    """
    with Image.open(path) as mask:
        if mask.mode not in MASK_MODES:
            raise DataError(
                f"mask {path} is a mode {mask.mode} image; masks are single-channel index PNGs (mode L or P) whose "
                "pixel values are class indices (a colour mask must be converted to indices first)"
            )
        return np.asarray(mask)


def scan_pairs(pairs: Sequence[tuple[Path, Path]]) -> tuple[list[tuple[Path, Path]], np.ndarray]:
    """Check every pair; returns the readable pairs and a `(pairs, 256)` bool array of the values each mask holds.

    Unreadable files are skipped with one warning naming them.

    Raises:
        DataError: a mask of another size than its image or of another mode, or no readable pair.
    """
    from tqdm.auto import tqdm

    kept, values, bad = [], [], []
    bar = tqdm(pairs, desc="checking masks", unit="mask", disable=len(pairs) < SCAN_PROGRESS_FROM, leave=False)
    for image_path, mask_path in bar:
        reason = check_image(image_path) or check_image(mask_path)
        if reason is not None:
            bad.append(f"{image_path.name} ({reason})")
            continue
        with Image.open(image_path) as image:
            size = image.size
        mask = read_mask(mask_path)
        if (mask.shape[1], mask.shape[0]) != size:
            raise DataError(
                f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but its image {image_path.name} is "
                f"{size[0]}x{size[1]}; a mask must have its image's size (resize masks with nearest-neighbour)"
            )
        kept.append((image_path, mask_path))
        values.append(np.bincount(mask.ravel(), minlength=256) > 0)
    if bad:
        warnings.warn(
            f"skipping {len(bad)} unreadable image/mask pair(s): {_listed(bad)}. Remove or replace them.", stacklevel=2
        )
    if not kept:
        raise DataError(f"none of the {len(pairs)} image/mask pairs can be read; check the files")
    return kept, np.stack(values)


def check_mask_values(
    pairs: Sequence[tuple[Path, Path]],
    values: np.ndarray,
    classes: Sequence[str],
    ignore_index: int | None,
    source: str,
) -> None:
    """Refuse a mask value that is neither a class index nor `ignore_index`, naming the first such mask."""
    if ignore_index is not None and 0 <= ignore_index < len(classes):
        raise DataError(
            f"the ignore index {ignore_index} is class {ignore_index} ({classes[ignore_index]!r}) of the "
            f"{len(classes)} classes; pick an ignore index outside 0..{len(classes) - 1} (--ignore-index)"
        )
    allowed = np.zeros(256, dtype=bool)
    allowed[: len(classes)] = True
    if ignore_index is not None and 0 <= ignore_index < 256:
        allowed[ignore_index] = True
    wrong = values & ~allowed
    rows = np.flatnonzero(wrong.any(axis=1))
    if rows.size:
        first = int(rows[0])
        found = ", ".join(str(v) for v in np.flatnonzero(wrong[first])[:LISTED])
        raise DataError(
            f"mask {pairs[first][1]} holds value(s) {found}, but there are {len(classes)} classes "
            f"(0..{len(classes) - 1}{source}) and the ignore index is {ignore_index} ({rows.size} mask(s) in all): "
            f"fix the masks, name the class in {CLASSES_FILE}, or set --ignore-index to the value that marks pixels "
            "to ignore"
        )


def inferred_classes(values: np.ndarray, ignore_index: int | None) -> list[str]:
    """`class0, class1, ...` up to the largest value the masks hold that is not the ignore index (at least 2)."""
    found = np.flatnonzero(values.any(axis=0))
    found = found[found != ignore_index] if ignore_index is not None else found
    top = int(found.max()) if found.size else 0
    return [f"class{i}" for i in range(max(top + 1, 2))]


class SegmentationFolder(Dataset):
    """Image and index-mask pairs of one split folder, checked when built; items are `(image, mask)` tensors.

    Args:
        root: The split folder, holding `images/` and `masks/`.
        classes: Class names (line i of `classes.txt` names class i); None: `class0`, `class1`,
            ... up to the largest value in the masks that is not the ignore index.
        transform: Takes and returns an `(image, mask)` pair (torchvision v2 tensors); default
            `segmentation_eval_transform(224)`.
        ignore_index: Mask value of pixels to ignore (counted in no loss or metric); None: none.

    Attributes:
        samples: `(image path, mask path)` pairs, sorted by name.
        classes: The class names.
        mask_values: `(len(samples), 256)` bools: which values each mask holds.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        classes: Sequence[str] | None = None,
        transform: JointTransform | None = None,
        ignore_index: int | None = 255,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: no such folder; a segmentation split holds images/ and masks/")
        self.ignore_index = ignore_index
        self.samples, self.mask_values = scan_pairs(find_pairs(self.root))
        self.classes: list[str] = []
        self.set_classes(classes, f", from {CLASSES_FILE}" if classes is not None else "")
        self.transform = transform or segmentation_eval_transform(224)

    def set_classes(self, classes: Sequence[str] | None, source: str = "") -> None:
        """Name the classes (None: inferred from the masks), checking every mask's values against them."""
        names = list(classes) if classes is not None else inferred_classes(self.mask_values, self.ignore_index)
        check_mask_values(self.samples, self.mask_values, names, self.ignore_index, source)
        self.classes = names
        self.class_to_idx = {name: i for i, name in enumerate(names)}

    @property
    def class_presence(self) -> np.ndarray:
        """`(len(samples), len(classes))` bools: which classes each mask shows."""
        return self.mask_values[:, : len(self.classes)]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, mask_path = self.samples[index]
        image = tv_tensors.Image(TF.pil_to_tensor(load_image(image_path)))
        mask = tv_tensors.Mask(torch.from_numpy(read_mask(mask_path).astype(np.int64)))
        image, mask = self.transform(image, mask)
        return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)


class PairTransformed(Dataset):
    """A dataset of `(image tensor, mask)` pairs with a joint transform applied to each (the shapes' augmentation).

    `classes` and `class_presence` of the dataset underneath show through `dataset`.
    """

    def __init__(self, dataset: Dataset, transform: JointTransform) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]  # wraps sized datasets only

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.dataset[index]
        image, mask = self.transform(tv_tensors.Image(image), tv_tensors.Mask(mask))
        return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)


def segmentation_augmentation(image_size: int, augment: str, flip: bool = True) -> v2.Compose | None:
    """The random crop and flip of `augment` for normalised tensors at their size (shapes); None for "none"."""
    if augment not in SEGMENTATION_AUGMENTS:
        segmentation_train_transform(image_size, augment, flip)  # raises the error that names the choices
    if augment == "none":
        return None
    steps: list[v2.Transform] = [v2.RandomResizedCrop(image_size, scale=(0.5, 1.0), antialias=True)]
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps)


def segmentation_folder_datasets(
    root: str | os.PathLike[str],
    image_size: int = 224,
    augment: str = "basic",
    flip: bool = True,
    ignore_index: int | None = 255,
) -> tuple[SegmentationFolder, SegmentationFolder, list[str]]:
    """Train and validation datasets of `root/{train,val}/{images,masks}`, and the class names.

    Class names come from `root/classes.txt` (line i names class i); without it they are
    `class0, class1, ...` up to the largest mask value of either split (ignore index aside).

    Raises:
        DataError: a missing split, any problem `SegmentationFolder` finds, or a value above
            the classes of `classes.txt`.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"--data {root}: no such folder; give a folder with train/ and val/ (each: images/, masks/)")
    splits = [root / "train", root / "val"]
    for split in splits:
        if not split.is_dir():
            hint = " (images/ and masks/ go inside train/ and val/)" if (root / "images").is_dir() else ""
            raise DataError(
                f"{root} has no {split.name}/ folder{hint}: segmentation data is train/images, train/masks, "
                f"val/images and val/masks inside {root}"
            )
    names_file = root / CLASSES_FILE
    classes = read_class_names(names_file) if names_file.is_file() else None
    train_transform = segmentation_train_transform(image_size, augment, flip)
    train = SegmentationFolder(splits[0], classes, train_transform, ignore_index)
    val = SegmentationFolder(splits[1], classes, segmentation_eval_transform(image_size), ignore_index)
    if classes is None:  # named from the values of both splits: a class seen in one split alone is named in both
        longer = max(train.classes, val.classes, key=len)
        train.set_classes(longer)
        val.set_classes(longer)
    return train, val, list(train.classes)
