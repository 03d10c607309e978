"""What the segmentation views share: gathered logits and masks, the check at fit start, fixed samples.

The views read each validation batch's logits and masks gathered across processes (each
sample once; the trainer gathers them for its own `loss_fn`, the views do when the model
makes its loss) and keep bounded device tensors; the main process reads them once at the
end of the validation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from accelerate.utils import send_to_device
from torch.utils.data import Dataset, IterableDataset
from torch.utils.data.dataloader import default_collate

from callbacks_kit.batches import side_forward
from callbacks_kit.cadence import warn_once
from callbacks_kit.data.wrappers import base_dataset
from callbacks_kit.errors import TrainerError
from callbacks_kit.inspection.probe import class_names_of, probe_batch, probe_outputs
from callbacks_kit.segmentation_metrics import segmentation_logits, segmentation_problem

if TYPE_CHECKING:
    from callbacks_kit.trainer import Trainer

SCAN_LIMIT = 512  # validation masks read at fit start to pick images that cover the classes


def gathered_segmentation(trainer: Trainer, owner: object) -> tuple[torch.Tensor, torch.Tensor] | None:
    """`(logits (N, C, H, W), masks (N, H, W))` of the validation batch just run, from every process.

    None, with one warning, for outputs that are not segmentation logits; the decision
    depends on shapes alone, so every process decides alike before a gather (call it on
    every process).
    """
    outputs, targets = trainer.last_outputs, trainer.last_targets
    logits = segmentation_logits(outputs)
    problem = segmentation_problem(logits, targets)
    if problem is not None:
        if trainer.is_main_process:
            warn_once(owner, "shape", f"{type(owner).__name__}: {problem}; disabled")
        return None
    assert logits is not None and isinstance(targets, torch.Tensor)
    if trainer.loss_fn is None and trainer.accelerator.num_processes > 1:
        logits, targets = trainer.accelerator.gather_for_metrics((logits, targets))
    return logits, targets


def check_segmentation_at_fit_start(trainer: Trainer, owner: object, class_names: Sequence[str] | None) -> list[str]:
    """Run two validation samples through the model; refuse outputs a segmentation view cannot read.

    Every process runs it, so a bad model raises everywhere before training. Returns the
    class names: `class_names`, else the dataset's `classes` when they fit, else indices.

    Raises:
        TrainerError: outputs that are not `(N, C, H, W)` logits for `(N, H, W)` masks, or a
            number of class names that does not match the logits' channels.
    """
    name = type(owner).__name__
    probe = probe_batch(trainer, 2)
    if probe is None:
        raise TrainerError(f"{name}: the validation dataset cannot be read by index; it needs one that can (a Dataset)")
    model = trainer.unwrapped_model
    with side_forward(model, trainer.device), torch.no_grad():
        logits = segmentation_logits(probe_outputs(trainer, model, *probe))
    problem = segmentation_problem(logits, probe[1])
    if problem is not None:
        raise TrainerError(
            f"{name}: the model and validation data do not fit: it {problem}. Segmentation views need a model that "
            "returns (N, C, H, W) logits (or torchvision's {'out': logits}) and (N, H, W) class-index masks"
        )
    assert logits is not None
    classes = 2 if logits.shape[1] == 1 else int(logits.shape[1])
    if class_names is not None:
        if len(class_names) != classes:
            raise TrainerError(
                f"{name}: {len(class_names)} class_names for a model with {classes} classes; pass one name per class "
                "(class_names=None for the dataset's classes)"
            )
        return list(class_names)
    found = class_names_of(trainer)
    return found if found is not None and len(found) == classes else [str(i) for i in range(classes)]


def validation_dataset(trainer: Trainer) -> Dataset | None:
    """The validation dataset when it can be read by index (a map-style dataset with a length), else None."""
    dataset = getattr(trainer.val_loader, "dataset", None)
    if not isinstance(dataset, Dataset) or isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
        return None
    return dataset


def covering_samples(dataset: Any, count: int, classes: int, scan_limit: int = SCAN_LIMIT) -> list[int]:
    """`count` sample indices chosen so that, together, they show as many classes as possible.

    Greedy: each pick adds the most classes not shown yet (ties: the most classes, then the
    lowest index); once every class is shown, the images with the most classes follow. Which
    classes a sample shows is read from the dataset's `class_presence` when it has one (a
    `SegmentationFolder` records it when it checks its masks), else from the masks of its
    first `scan_limit` samples.
    """
    presence = _presence(dataset, classes, scan_limit)
    chosen: list[int] = []
    shown = np.zeros(classes, dtype=bool)
    while len(chosen) < min(count, len(presence)):
        new = (presence & ~shown).sum(axis=1)
        score = new * (classes + 1) + presence.sum(axis=1)
        score[chosen] = -1
        best = int(np.argmax(score))  # the first of equal scores: the lowest index
        chosen.append(best)
        shown |= presence[best]
    return chosen


def _presence(dataset: Any, classes: int, scan_limit: int) -> np.ndarray:
    recorded = getattr(base_dataset(dataset), "class_presence", None)
    length = len(dataset)
    if isinstance(recorded, np.ndarray) and recorded.shape[0] == length:
        padded = np.zeros((length, classes), dtype=bool)
        padded[:, : min(classes, recorded.shape[1])] = recorded[:, :classes]
        return padded
    rows = []
    with torch.random.fork_rng(devices=[]):  # a random transform must not move the run's RNG
        for index in range(min(length, scan_limit)):
            mask = torch.as_tensor(dataset[index][1]).long().flatten()
            mask = mask[(mask >= 0) & (mask < classes)]
            rows.append(torch.bincount(mask, minlength=classes).numpy()[:classes] > 0)
    return np.stack(rows) if rows else np.zeros((0, classes), dtype=bool)


def samples_batch(trainer: Trainer, dataset: Any, indices: Sequence[int]) -> tuple[Any, Any]:
    """`(inputs, targets)` of the samples at `indices` of `dataset`, collated, on the device."""
    collate = getattr(trainer.val_loader, "collate_fn", None) or default_collate
    with torch.random.fork_rng(devices=[]):
        batch = collate([dataset[i] for i in indices])
    inputs, targets = trainer.unpack_batch(batch)
    return send_to_device(inputs, trainer.device), send_to_device(targets, trainer.device)
