"""Transforms: the augmentation policies `--augment` may name, and the train and eval pipelines for images."""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from callbacks_kit.choices import AUGMENTS as AUGMENTS
from callbacks_kit.choices import CROP_RATIO
from callbacks_kit.data.normalization import IMAGENET_MEAN, IMAGENET_STD
from callbacks_kit.errors import DataError

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


def train_transform(
    image_size: int, augment: str = "basic", flip: bool = True, crop_ratio: float = CROP_RATIO
) -> v2.Compose:
    """`augmentation(image_size, augment, flip)` on the 8-bit image, then ImageNet normalisation.

    With `augment="none"` the images are resized and centre-cropped as for validation.
    """
    random = augmentation(image_size, augment, flip)
    fixed = [v2.Resize(eval_resize(image_size, crop_ratio), antialias=True), v2.CenterCrop(image_size)]
    return v2.Compose(
        [
            v2.ToImage(),
            *(random or fixed),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def eval_resize(image_size: int, crop_ratio: float = CROP_RATIO) -> int:
    """The shorter side images are resized to before the centre crop of `image_size` keeps `crop_ratio` of it."""
    return max(image_size, round(image_size / crop_ratio))


def eval_transform(image_size: int, crop_ratio: float = CROP_RATIO) -> v2.Compose:
    """Resize the shorter side to `eval_resize(image_size, crop_ratio)`, centre crop, ImageNet normalisation."""
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(eval_resize(image_size, crop_ratio), antialias=True),
            v2.CenterCrop(image_size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
