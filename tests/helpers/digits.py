"""scikit-learn's handwritten digits written as an ImageFolder tree of PNGs (train/, val/ and test/)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_digits_folder(root: Path, size: int = 32, val: float = 0.15, test: float = 0.15, seed: int = 0) -> Path:
    """`root/{train,val,test}/<digit>/<i>.png`: the 1797 8x8 digits of `load_digits`, enlarged to `size` px.

    Each class is split on its own (shuffled by `seed`), so every split holds every digit.
    Returns `root`.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    for label in range(10):
        indices = rng.permutation(np.flatnonzero(digits.target == label))
        n_val, n_test = round(len(indices) * val), round(len(indices) * test)
        parts = {"val": indices[:n_val], "test": indices[n_val : n_val + n_test], "train": indices[n_val + n_test :]}
        for part, chosen in parts.items():
            folder = root / part / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            for i in chosen:
                pixels = (digits.images[i] * (255 / 16)).round().astype(np.uint8)
                Image.fromarray(pixels, "L").resize((size, size), Image.NEAREST).save(folder / f"{i}.png")
    return root
