"""Data: the built-in shapes dataset (no download) and ImageFolder loading with transforms."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import datasets
from torchvision.transforms import v2

from callbacks_kit.cpu import cpu_forced, one_cpu_thread
from callbacks_kit.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SHAPES = ("circle", "square", "triangle", "cross", "star", "ring")


class ShapesDataset(Dataset):
    """Coloured geometric shapes on noisy backgrounds, generated from a seed: no download.

    Sample `i` depends only on `(seed, i)`, so the data is the same on every machine, in
    every worker and every process. Shapes vary in colour, size, position and rotation;
    colours carry no class information.

    Args:
        num_samples: Number of images.
        image_size: Height and width in pixels.
        seed: Seed of the whole dataset; use different seeds for train and validation.
        task: "classification" gives `(image, class_index)`; "segmentation" gives
            `(image, mask)` with one to three shapes per image and a `(H, W)` long mask
            holding 0 for background and `class_index + 1` for each shape's pixels.
        normalize: Standardise with the ImageNet mean and std, as pretrained models expect.
        transform: Applied to each classification image (float, in [0, 1]) before the
            normalisation, e.g. `v2.Compose(augmentation(64, "trivialaugment"))`. It draws
            from torch's global RNG, so a sample then depends on more than `(seed, i)`.
    """

    classes: tuple[str, ...] = SHAPES

    def __init__(
        self,
        num_samples: int = 3000,
        image_size: int = 64,
        seed: int = 0,
        task: str = "classification",
        normalize: bool = True,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        if task not in ("classification", "segmentation"):
            raise DataError(f"task={task!r}; use 'classification' or 'segmentation'")
        if num_samples < 1 or image_size < 16:
            raise DataError(f"need num_samples >= 1 and image_size >= 16, got {num_samples} and {image_size}")
        self.num_samples = num_samples
        self.image_size = image_size
        self.seed = seed
        self.task = task
        self.normalize = normalize
        self.transform = transform
        if transform is not None and task != "classification":
            raise DataError("a transform of ShapesDataset applies to classification images; its masks would not follow")
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        coords = (torch.arange(image_size, dtype=torch.float32) + 0.5) / image_size
        self._yy, self._xx = torch.meshgrid(coords, coords, indexing="ij")

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor | int]:
        if not 0 <= index < self.num_samples:
            raise IndexError(index)
        with one_cpu_thread():
            return self._draw(index)

    def _draw(self, index: int) -> tuple[torch.Tensor, torch.Tensor | int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        background = torch.rand(3, 1, 1, generator=g)
        image = background.expand(3, self.image_size, self.image_size).clone()
        mask = torch.zeros(self.image_size, self.image_size, dtype=torch.long)
        count = 1 if self.task == "classification" else int(torch.randint(1, 4, (1,), generator=g))
        label = 0
        for _ in range(count):
            label = int(torch.randint(len(self.classes), (1,), generator=g))
            inside = self._shape_mask(label, g, small=count > 1)
            image[:, inside] = _contrasting_colour(background.flatten(), g)[:, None]
            mask[inside] = label + 1
        image = (image + 0.04 * torch.randn(image.shape, generator=g)).clamp_(0, 1)
        if self.transform is not None:
            image = self.transform(image)
        if self.normalize:
            image = v2.functional.normalize(image, list(IMAGENET_MEAN), list(IMAGENET_STD))
        return (image, label) if self.task == "classification" else (image, mask)

    def _shape_mask(self, label: int, g: torch.Generator, small: bool) -> torch.Tensor:
        scale = 0.5 if small else 1.0
        radius = scale * (0.22 + 0.14 * float(torch.rand((), generator=g)))
        low, high = radius + 0.02, 1 - radius - 0.02
        cy, cx = (low + (high - low) * torch.rand(2, generator=g)).tolist()
        angle = (float(torch.rand((), generator=g)) - 0.5) * math.pi / 3  # within +-30 degrees
        dy, dx = self._yy - cy, self._xx - cx
        u = dx * math.cos(angle) + dy * math.sin(angle)
        v = -dx * math.sin(angle) + dy * math.cos(angle)
        rho, theta = torch.sqrt(u * u + v * v), torch.atan2(v, u)
        name = self.classes[label]
        if name == "circle":
            return rho <= radius
        if name == "square":
            return torch.maximum(u.abs(), v.abs()) <= radius * 0.8
        if name == "triangle":
            # Inside all three edges of an equilateral triangle with inradius 0.6 radius.
            edges = [u * math.cos(a) + v * math.sin(a) for a in (math.pi / 2, 7 * math.pi / 6, 11 * math.pi / 6)]
            return torch.stack(edges).amax(0) <= radius * 0.6
        if name == "cross":
            arm, width = radius, radius * 0.32
            return ((u.abs() <= width) & (v.abs() <= arm)) | ((v.abs() <= width) & (u.abs() <= arm))
        if name == "star":
            # Radius swings linearly between inner and outer points: five sharp tips.
            phase = (theta * 5 / (2 * math.pi)) % 1.0
            swing = 1 - (phase - 0.5).abs() * 2
            return rho <= radius * (0.42 + 0.58 * swing)
        return (rho <= radius) & (rho >= radius * 0.6)  # ring


def _contrasting_colour(background: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A random colour whose brightness differs enough from the background to be seen."""
    for _ in range(20):
        colour = torch.rand(3, generator=g)
        if (colour - background).abs().max() > 0.35:
            return colour
    return 1 - background


def denormalize(
    images: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """Undo the ImageNet normalisation for display, clamped to [0, 1]."""
    mean_t = torch.tensor(mean, device=images.device).view(-1, 1, 1)
    std_t = torch.tensor(std, device=images.device).view(-1, 1, 1)
    return (images * std_t + mean_t).clamp(0, 1)


# ------------------------------------------------------------------------------ augmentation
# What `--augment` may name: no random transform, today's crop and flip, or one of
# torchvision's v2 policies after the crop and flip (as in torchvision's reference scripts).
AUGMENTS = ("none", "basic", "trivialaugment", "randaugment", "autoaugment")
POLICIES = {"trivialaugment": v2.TrivialAugmentWide, "randaugment": v2.RandAugment, "autoaugment": v2.AutoAugment}


def augmentation(image_size: int, augment: str = "basic", flip: bool = True) -> list[v2.Transform]:
    """The random training transforms of `augment`, for images or image tensors of any size.

    "none": none (the caller resizes); "basic": a random resized crop to `image_size`
    (scale 0.5 to 1) and a horizontal flip; "trivialaugment", "randaugment", "autoaugment":
    the crop and flip, then torchvision's policy of that name (default settings).
    `flip=False` leaves the flip out, for data where a mirror image changes the class.
    """
    if augment not in AUGMENTS:
        raise DataError(f"augment={augment!r} is not one of {', '.join(AUGMENTS)}")
    if augment == "none":
        return []
    steps: list[v2.Transform] = [v2.RandomResizedCrop(image_size, scale=(0.5, 1.0), antialias=True)]
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    if augment in POLICIES:
        steps.append(POLICIES[augment]())
    return steps


# ------------------------------------------------------------------------------ ImageFolder
def train_transform(image_size: int, augment: str = "basic", flip: bool = True) -> v2.Compose:
    """`augmentation(image_size, augment, flip)` on the 8-bit image, then ImageNet normalisation.

    With `augment="none"` the images are resized and centre-cropped as for validation.
    """
    random = augmentation(image_size, augment, flip)
    fixed = [v2.Resize(round(image_size / 0.875), antialias=True), v2.CenterCrop(image_size)]
    return v2.Compose(
        [
            v2.ToImage(),
            *(random or fixed),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def eval_transform(image_size: int) -> v2.Compose:
    """Resize to 1/0.875 of the size, centre crop, ImageNet normalisation."""
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(round(image_size / 0.875), antialias=True),
            v2.CenterCrop(image_size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def image_folder_datasets(
    root: str | os.PathLike[str],
    image_size: int = 224,
    val_split: float | None = None,
    seed: int = 0,
    augment: str = "basic",
    flip: bool = True,
) -> tuple[Dataset, Dataset, list[str]]:
    """Train and validation datasets from an ImageFolder tree.

    `root/train/<class>/*.jpg` and `root/val/<class>/*.jpg` when both exist; otherwise
    `root/<class>/*.jpg` split at random (by `seed`) with `val_split` of it for validation.
    Training images get `train_transform(image_size, augment, flip)`; validation images
    are only resized, centre-cropped and normalised.

    Returns:
        `(train_dataset, val_dataset, class_names)`.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"--data {root}: no such folder; give a folder with train/ and val/ or class subfolders")
    train_dir, val_dir = root / "train", root / "val"
    if train_dir.is_dir() and val_dir.is_dir():
        train = _image_folder(train_dir, train_transform(image_size, augment, flip))
        val = _image_folder(val_dir, eval_transform(image_size))
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
    train_all = _image_folder(root, train_transform(image_size, augment, flip))
    val_all = _image_folder(root, eval_transform(image_size))
    _check_classes(train_all.classes, root)
    drop_unreadable(train_all, val_all)
    order = torch.randperm(len(train_all), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = max(1, round(len(order) * split))
    if n_val >= len(order):
        raise DataError(f"{root} has {len(order)} images: too few to hold out {split:.0%} for validation")
    return Subset(train_all, order[n_val:]), Subset(val_all, order[:n_val]), list(train_all.classes)


def load_image(path: str | os.PathLike[str]) -> Image.Image:
    """An image file as 8-bit RGB, whatever its PIL mode.

    PIL's `convert("RGB")` clips 16-bit and 32-bit greyscale ("I;16", "I") and float ("F")
    images to 255, so they come out white; these are scaled to 8 bits first.
    """
    with open(path, "rb") as f:
        image = Image.open(f)
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


def base_dataset(dataset: Any) -> Any:
    """The dataset under `Subset`s and similar wrappers (anything holding a `.dataset`).

    Stops at the first level that knows its classes, so a wrapper that defines its own
    `classes` is kept.
    """
    while not hasattr(dataset, "classes") and not hasattr(dataset, "class_to_idx") and hasattr(dataset, "dataset"):
        dataset = dataset.dataset
    return dataset


def class_names(dataset: Any) -> list[str] | None:
    """The `classes` of a dataset (looking through `Subset`s) as strings, or None when it has none."""
    classes = getattr(base_dataset(dataset), "classes", None)
    return [str(c) for c in classes] if isinstance(classes, Sequence) and not isinstance(classes, str) else None


def default_workers() -> int:
    """Data-loading workers per process, for the cores this process may use (a container's or taskset's limit).

    The cores are shared by the processes launched on this machine (`LOCAL_WORLD_SIZE`, set
    by torchrun and `accelerate launch`): each gets its share. Of a share, half on a CPU-only
    machine (the other half runs the model); all but one with a GPU, which runs the model
    while the main process only feeds it. At most 8: more rarely help and each holds its own
    copy of the dataset object.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    share = max(1, cores // local)
    return min(8, share - 1 if torch.cuda.is_available() else share // 2)


def pin_by_default() -> bool:
    """Whether `make_loader` pins memory by default: a GPU is there and `ACCELERATE_USE_CPU` does not force the CPU."""
    return torch.cuda.is_available() and not cpu_forced()


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    workers: int,
    pin_memory: bool | None = None,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader with persistent workers (no restart each epoch) and pinned memory on a GPU.

    Args:
        dataset: The samples.
        batch_size: Samples per batch (per process once Accelerate shards the loader).
        shuffle: Reshuffle every epoch (training).
        workers: Worker processes; 0 loads in the main process.
        pin_memory: Page-locked batches, copied to the GPU faster and without blocking; None
            pins them when CUDA is available and the CPU is not forced (`ACCELERATE_USE_CPU`).
            Pass False when training with `cpu=True`.
        drop_last: Drop the last, smaller batch (training: a batch of one sample fails BatchNorm).
    """
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        pin_memory=pin_by_default() if pin_memory is None else pin_memory,
        persistent_workers=workers > 0,
        drop_last=drop_last,
    )
