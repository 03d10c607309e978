"""Looking through dataset wrappers (`Subset` and the like): the dataset underneath and its class names."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


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
