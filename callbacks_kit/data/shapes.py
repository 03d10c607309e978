"""The built-in shapes dataset: coloured shapes on noisy backgrounds, drawn from a seed (no download)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from callbacks_kit.cpu import one_cpu_thread
from callbacks_kit.data.normalization import IMAGENET_MEAN, IMAGENET_STD
from callbacks_kit.errors import DataError

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
            holding 0 for background and `class_index + 1` for each shape's pixels; its
            `classes` are then `("background", *SHAPES)`, one name per mask value.
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
        if task == "segmentation":  # mask values: 0 for the background, class index + 1 on each shape
            self.classes = ("background", *SHAPES)
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
            label = int(torch.randint(len(SHAPES), (1,), generator=g))
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
        name = SHAPES[label]
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
