"""Small image folders written as PNG files, drawn from the shapes dataset."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision

from callbacks_kit.data import ShapesDataset, denormalize


def write_image_folder(root: Path, per_class: int = 6, split: bool = True) -> None:
    """A small ImageFolder tree of PNGs drawn from the shapes dataset."""
    shapes = ShapesDataset(per_class * 12, image_size=40, seed=3)
    counts: dict[tuple[str, str], int] = {}
    for i in range(len(shapes)):
        image, label = shapes[i]
        part = ("train" if i % 3 else "val") if split else ""
        name = shapes.classes[label]
        folder = root / part / name
        folder.mkdir(parents=True, exist_ok=True)
        counts[(part, name)] = counts.get((part, name), 0) + 1
        torchvision.utils.save_image(denormalize(image), folder / f"{i}.png")
    if split:  # every class needs a folder on both sides
        for part in ("train", "val"):
            for name in shapes.classes:
                folder = root / part / name
                if not folder.exists() or not any(folder.iterdir()):
                    folder.mkdir(parents=True, exist_ok=True)
                    torchvision.utils.save_image(torch.rand(3, 40, 40), folder / "extra.png")


def write_segmentation_split(
    split: Path, count: int, size: int = 24, seed: int = 0, ignore_border: bool = False, sizes: tuple[int, ...] = ()
) -> None:
    """`split/images/<i>.png` and `split/masks/<i>.png` (mode L, 0 background, shape + 1) from the shapes dataset.

    `ignore_border` marks a one-pixel frame of every mask 255; `sizes` gives images of other
    sizes (their masks resized with nearest-neighbour).
    """
    from PIL import Image

    shapes = ShapesDataset(count, image_size=size, seed=seed, task="segmentation")
    (split / "images").mkdir(parents=True, exist_ok=True)
    (split / "masks").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image, mask = shapes[i]
        pixels = (denormalize(image).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        values = mask.byte().numpy().copy()
        if ignore_border:
            values[0, :] = values[-1, :] = values[:, 0] = values[:, -1] = 255
        picture, labels = Image.fromarray(pixels), Image.fromarray(values)
        if sizes:
            width, height = sizes[i % len(sizes)], sizes[(i + 1) % len(sizes)]
            picture = picture.resize((width, height), Image.BILINEAR)
            labels = labels.resize((width, height), Image.NEAREST)
        picture.save(split / "images" / f"{i:03d}.png")
        labels.save(split / "masks" / f"{i:03d}.png")
