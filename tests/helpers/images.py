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
