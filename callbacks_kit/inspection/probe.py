"""The fixed probe batch that image callbacks look at, and a side forward on the bare model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from accelerate.utils import send_to_device
from torch import nn
from torch.utils.data import Dataset, IterableDataset
from torch.utils.data.dataloader import default_collate

from callbacks_kit.data.normalization import IMAGENET_MEAN, IMAGENET_STD
from callbacks_kit.data.wrappers import class_names, dataset_labels

if TYPE_CHECKING:
    from callbacks_kit.trainer import Trainer

Probe = tuple[Any, Any]


def probe_batch(trainer: Trainer, count: int, spread: bool = False) -> Probe | None:
    """`(inputs, targets)` of `count` validation samples (else training), on the device.

    The first `count` samples, or with `spread` samples spread over the classes
    (`spread_indices`). Read from the loader's dataset by index, so the same samples come
    out in every run, every epoch and with any number of processes, and the prepared
    loader is not touched. None when the dataset cannot be indexed (an `IterableDataset`).
    """
    loader = trainer.val_loader if trainer.val_loader is not None else trainer.train_loader
    dataset = getattr(loader, "dataset", None)
    if not isinstance(dataset, Dataset) or isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
        return None
    count = min(count, len(dataset))
    if count < 1:
        return None
    indices = spread_indices(dataset, count) if spread else list(range(count))
    collate = getattr(loader, "collate_fn", None) or default_collate
    with torch.random.fork_rng(devices=[]):  # random transforms must not move the run's RNG
        batch = collate([dataset[i] for i in indices])
    inputs, targets = trainer.unpack_batch(batch)
    return send_to_device(inputs, trainer.device), send_to_device(targets, trainer.device)


def spread_indices(dataset: Any, count: int) -> list[int]:
    """`count` sample indices spread over the classes: the first sample of each class in turn, then the second...

    An ImageFolder lists its samples class by class, so its first samples are all of the
    first class. The labels come from the dataset without loading an image
    (`data.wrappers.dataset_labels`); a dataset that does not give them gets indices
    spread evenly over its length instead, which meets every class of a sorted one.
    """
    size = len(dataset)
    count = min(count, size)
    labels = dataset_labels(dataset)
    if labels is None:
        return [i * size // count for i in range(count)]
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(label, []).append(index)
    queues = [by_class[label] for label in sorted(by_class)]
    picked: list[int] = []
    for rank in range(max(len(queue) for queue in queues)):
        picked += [queue[rank] for queue in queues if rank < len(queue)]
        if len(picked) >= count:
            break
    return picked[:count]


def class_names_of(trainer: Trainer) -> list[str] | None:
    """The `classes` of the validation (else training) dataset, looking through `Subset`s."""
    loader = trainer.val_loader if trainer.val_loader is not None else trainer.train_loader
    return class_names(getattr(loader, "dataset", None))


def probe_outputs(trainer: Trainer, model: nn.Module, inputs: Any, targets: Any) -> Any:
    """The outputs of `trainer.forward` run on `model` (the bare module: no DDP, no compile, hooks allowed)."""
    return trainer.forward(inputs, targets, model=model)[1]


def logits_of(outputs: Any) -> torch.Tensor | None:
    """Class scores from a model's outputs: a tensor, or the `logits` of a dict or object."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, Mapping) and isinstance(outputs.get("logits"), torch.Tensor):
        return outputs["logits"]
    logits = getattr(outputs, "logits", None)
    return logits if isinstance(logits, torch.Tensor) else None


def display_images(
    images: torch.Tensor, mean: Sequence[float] | None = IMAGENET_MEAN, std: Sequence[float] | None = IMAGENET_STD
) -> torch.Tensor:
    """`(N, 3, H, W)` images in [0, 1] for display.

    Undoes the normalisation with `mean` and `std` when their length matches the
    channels; otherwise (or when they are None) stretches each image to [0, 1]. One
    channel becomes grey RGB; more than three keep the first three.
    """
    images = images.detach().float()
    channels = images.shape[1]
    if mean is not None and std is not None and len(mean) == channels == len(std):
        mean_t = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
        std_t = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
        images = (images * std_t + mean_t).clamp(0, 1)
    else:
        images = normalize_each(images, dims=(1, 2, 3))
    if channels == 1:
        return images.expand(-1, 3, -1, -1)
    return images[:, :3]


def normalize_each(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Scale `x` to [0, 1] separately along the other dimensions; constant slices become 0.5."""
    low = x.amin(dim=dims, keepdim=True)
    high = x.amax(dim=dims, keepdim=True)
    span = high - low
    return torch.where(span > 0, (x - low) / span.clamp_min(1e-12), torch.full_like(x, 0.5))


def is_image_batch(inputs: Any) -> bool:
    """True for an `(N, C, H, W)` floating-point tensor."""
    return isinstance(inputs, torch.Tensor) and inputs.ndim == 4 and inputs.is_floating_point()
