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


def dataset_labels(dataset: Any) -> list[int] | None:
    """Each sample's class index, read without loading any image, or None when the dataset does not say.

    From `targets` (ImageFolder and most torchvision datasets) or `samples` (`(path, class)`
    pairs), looking through `Subset`s (`dataset` and `indices`).
    """
    indices = getattr(dataset, "indices", None)
    if indices is not None and hasattr(dataset, "dataset"):
        labels = dataset_labels(dataset.dataset)
        return None if labels is None else [labels[int(i)] for i in indices]
    targets = getattr(dataset, "targets", None)
    if targets is None:
        samples = getattr(dataset, "samples", None)
        if not isinstance(samples, Sequence) or not all(isinstance(s, tuple) and len(s) == 2 for s in samples):
            return None
        targets = [label for _, label in samples]
    try:
        labels = [int(label) for label in targets]
    except (TypeError, ValueError):  # soft or multi-label targets name no single class
        return None
    return labels if len(labels) == len(dataset) else None
