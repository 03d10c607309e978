"""A run's input size and what validation does to an image: from --image-size, the named --weights, or the data.

The built-in shapes are drawn at the input size (64 px unless --image-size). With --data or
--labels the default follows what the model will see: the size torchvision's named --weights
were trained at (with their own crop ratio), else the training images' median shorter side
between `MIN_SIDE` and `MAX_SIDE`. Validation (and predict, evaluate) resizes the shorter
side to size / crop ratio and centre-crops the size; run.json records both numbers.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

from callbacks_kit.choices import CROP_RATIO
from callbacks_kit.data.images import is_image_name, typical_side
from callbacks_kit.data.transforms import eval_resize
from callbacks_kit.errors import CLIError
from callbacks_kit.finetune.hub import is_weight_name, weights_input_size
from callbacks_kit.finetune.timm_models import is_timm_name

SHAPES_SIDE = 64  # the built-in shapes' default size
# torchvision's classifiers downsample 32 times: below 32 px the last stages see less than a pixel.
MIN_SIDE = 32
# ImageNet's input: larger images cost more on a CPU than a classifier gains from them.
MAX_SIDE = 224


@dataclass
class InputSize:
    """The square input side, the shorter side validation resizes to before the centre crop, and why."""

    size: int
    resize: int
    crop_ratio: float | None  # None: images go in as drawn (the built-in shapes)
    why: str

    def describe(self) -> str:
        """One line for the start of a command: the size, where it comes from, and the validation resize and crop."""
        line = f"input {self.size}x{self.size} px ({self.why})"
        if self.crop_ratio is None:
            return f"{line}; validation images are drawn at that size"
        return (
            f"{line}; validation resizes the shorter side to {self.resize} px and centre-crops {self.size} "
            f"(crop ratio {self.crop_ratio:g}, --crop-ratio)"
        )


def input_size(args: argparse.Namespace) -> InputSize:
    """The input size of `args` (train and lr-find), checked before any data is loaded.

    Raises:
        CLIError: `--crop-ratio` outside (0, 1], or given for the built-in shapes, which it would not change.
    """
    ratio = args.crop_ratio
    if not (args.data or args.labels):
        if ratio is not None:
            raise CLIError(
                "--crop-ratio sets how --data or --labels images are resized and cropped for validation; the built-in "
                "shapes are drawn at the input size, so it would change nothing: drop it"
            )
        size = args.image_size or SHAPES_SIDE
        return InputSize(size, size, None, "--image-size" if args.image_size else "the built-in shapes' default")
    if ratio is not None and not (math.isfinite(ratio) and 0 < ratio <= 1):
        raise CLIError(
            f"--crop-ratio must be above 0 and at most 1 (0.875: resize to 256 px and crop 224; 1: keep the whole "
            f"image), got {ratio}"
        )
    named = args.weights is not None and is_weight_name(args.weights) and not is_timm_name(args.model)
    preset = weights_input_size(args.model, args.weights) if named else None
    if ratio is None:
        ratio = preset[0] / preset[1] if preset else CROP_RATIO
    if args.image_size:
        size, why = args.image_size, "--image-size"
    elif preset:
        size, why = preset[0], f"what the {args.model} {args.weights} weights were trained at"
    else:
        size, why = data_side(Path(args.images if args.labels else args.data))
    return InputSize(size, eval_resize(size, ratio), ratio, why)


def data_side(root: Path) -> tuple[int, str]:
    """The default side for the images under `root` (its `train/` when it has `train/` and `val/`), and why."""
    folder = root / "train" if (root / "train").is_dir() and (root / "val").is_dir() else root
    paths = sorted(path for path in folder.rglob("*") if is_image_name(path) and path.is_file())
    side = typical_side(paths)
    if side is None:  # loading the data explains what is wrong with the folder
        return MAX_SIDE, f"no readable image in {folder}"
    size = min(MAX_SIDE, max(MIN_SIDE, side))
    bound = "" if size == side else f", {'capped at' if side > size else 'raised to'} {size}"
    return size, f"the training images' median shorter side, {side} px{bound}"
