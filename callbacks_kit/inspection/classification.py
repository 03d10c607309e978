"""What the error-analysis views share: gathered logits, device counts, and the per-class math.

The views (`TopLosses`, `ClassReport`) read each validation batch's outputs and targets,
gathered across processes with each sample once, and keep only bounded device tensors (a
confusion count, threshold histograms, a running top-K), so a batch never waits for the
host. The numbers are computed from the counts at the end, on the host, once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from callbacks_kit.batches import side_forward
from callbacks_kit.cadence import warn_once
from callbacks_kit.errors import TrainerError
from callbacks_kit.inspection.probe import logits_of, probe_batch, probe_outputs

if TYPE_CHECKING:
    from callbacks_kit.trainer import Trainer


def gathered_batch(trainer: Trainer, owner: object) -> tuple[torch.Tensor, torch.Tensor] | None:
    """`(logits (N, C), targets (N,))` of the validation batch just run, from every process.

    The trainer gathers outputs for its own `loss_fn`; when the model makes its loss, this
    gathers them here (every process takes part, so call it on every process). None, with
    one warning, for outputs that are not `(N, classes)` logits with `(N,)` class targets;
    the decision depends on shapes alone, so every process decides alike before a gather.
    """
    outputs, targets = logits_of(trainer.last_outputs), trainer.last_targets
    problem = logits_problem(outputs, targets)
    if problem is not None:
        if trainer.is_main_process:
            warn_once(owner, "shape", f"{type(owner).__name__}: {problem}; disabled")
        return None
    assert isinstance(outputs, torch.Tensor) and isinstance(targets, torch.Tensor)
    if trainer.loss_fn is None and trainer.accelerator.num_processes > 1:
        outputs, targets = trainer.accelerator.gather_for_metrics((outputs, targets))
    return outputs, targets


def logits_problem(outputs: Any, targets: Any) -> str | None:
    """What is wrong with `(outputs, targets)` for a per-class view, or None when they fit."""
    if not isinstance(outputs, torch.Tensor) or not isinstance(targets, torch.Tensor):
        return f"needs tensor logits and class-index targets, got {type(outputs).__name__} and {type(targets).__name__}"
    if outputs.ndim != 2 or outputs.shape[1] < 2 or targets.ndim != 1 or outputs.shape[0] != targets.shape[0]:
        return (
            f"needs (N, classes) logits with at least 2 classes and (N,) class-index targets, got "
            f"{tuple(outputs.shape)} and {tuple(targets.shape)}"
        )
    if targets.is_floating_point():
        return f"needs integer class-index targets, got {targets.dtype}"
    return None


def check_outputs_at_fit_start(trainer: Trainer, owner: object, class_names: Sequence[str] | None) -> bool:
    """Run two validation samples through the model and refuse outputs the view cannot read.

    Every process runs it, so a bad model raises everywhere before training; False (with one
    warning) when no sample can be read by index (an iterable dataset): the view then checks
    each batch instead.

    Raises:
        TrainerError: outputs that are not `(N, classes)` logits, or a number of class names
            that does not match the outputs.
    """
    name = type(owner).__name__
    probe = probe_batch(trainer, 2)
    if probe is None:
        return False
    model = trainer.unwrapped_model
    with side_forward(model, trainer.device), torch.no_grad():
        outputs = logits_of(probe_outputs(trainer, model, *probe))
    problem = logits_problem(outputs, probe[1])
    if problem is not None:
        raise TrainerError(
            f"{name}: the model and validation data do not fit: it {problem}. Leave {name} out for models that "
            "are not classifiers, or return the logits (a tensor, or a dict or object with `logits`)"
        )
    assert outputs is not None
    classes = outputs.shape[1]
    if class_names is not None and len(class_names) != classes:
        raise TrainerError(
            f"{name}: {len(class_names)} class_names for a model with {classes} outputs; pass one name per output "
            "(or class_names=None for the dataset's classes)"
        )
    return True


def dataset_length(trainer: Trainer) -> int | None:
    """Samples in the validation dataset, when it has a length."""
    dataset = getattr(trainer.val_loader, "dataset", None)
    try:
        return len(dataset) if dataset is not None else None
    except TypeError:
        return None


class ConfusionCounts:
    """A `(classes, classes)` confusion count kept on the device (rows: true classes).

    Targets outside `[0, classes)` (an ignore index) go to a spare slot, so no boolean
    mask, and so no device sync, is needed.
    """

    def __init__(self) -> None:
        self.counts: torch.Tensor | None = None
        self.classes = 0

    def reset(self) -> None:
        """Forget the counts (at each validation start)."""
        self.counts = None

    def add(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Count one gathered batch of `(N, C)` logits and `(N,)` targets."""
        classes = logits.shape[1]
        if self.counts is None:
            self.classes = classes
            self.counts = torch.zeros(classes * classes + 1, dtype=torch.long, device=logits.device)
        truth = targets.long()
        valid = (truth >= 0) & (truth < classes)
        index = torch.where(valid, truth * classes + logits.argmax(dim=1), classes * classes)
        self.counts.index_add_(0, index, torch.ones_like(index))

    def matrix(self) -> torch.Tensor | None:
        """The counts as a `(classes, classes)` CPU tensor (one host read), or None before any batch."""
        if self.counts is None:
            return None
        return self.counts[:-1].view(self.classes, self.classes).cpu()


@dataclass
class ClassStats:
    """Per-class precision, recall, F1 and support, and their macro and weighted averages.

    Classes without predictions (precision) or without samples (recall) get 0, as
    scikit-learn's `precision_recall_fscore_support(zero_division=0)` does.
    """

    precision: list[float]
    recall: list[float]
    f1: list[float]
    support: list[int]

    def average(self, kind: str) -> dict[str, float]:
        """`{"precision", "recall", "f1"}` averaged: "macro" (every class alike) or "weighted" (by support)."""
        total = sum(self.support)
        weights = [1 / len(self.support)] * len(self.support)
        if kind == "weighted":
            weights = [s / total if total else 0.0 for s in self.support]
        return {
            name: sum(w * v for w, v in zip(weights, values, strict=True))
            for name, values in (("precision", self.precision), ("recall", self.recall), ("f1", self.f1))
        }


def class_stats(matrix: torch.Tensor) -> ClassStats:
    """Precision, recall, F1 and support per class of a `(classes, classes)` count (rows: true)."""
    m = matrix.double()
    tp = m.diag()
    predicted, actual = m.sum(dim=0), m.sum(dim=1)
    precision = torch.where(predicted > 0, tp / predicted.clamp_min(1), torch.zeros_like(tp))
    recall = torch.where(actual > 0, tp / actual.clamp_min(1), torch.zeros_like(tp))
    both = precision + recall
    f1 = torch.where(both > 0, 2 * precision * recall / both.clamp_min(1e-300), torch.zeros_like(tp))
    return ClassStats(precision.tolist(), recall.tolist(), f1.tolist(), [int(v) for v in actual.tolist()])


def most_confused(matrix: torch.Tensor, count: int) -> list[tuple[int, int, int]]:
    """The `count` largest off-diagonal cells as `(true, predicted, samples)`, most first; empty cells left out."""
    off = matrix.clone()
    off.fill_diagonal_(0)
    values, flat = off.flatten().sort(descending=True, stable=True)
    classes = matrix.shape[0]
    top = zip(values[:count].tolist(), flat[:count].tolist(), strict=True)
    return [(i // classes, i % classes, v) for v, i in top if v > 0]


def class_name(names: Sequence[str] | None, index: int) -> str:
    """`names[index]`, or the index when there are no (or too few) names."""
    return names[index] if names is not None and 0 <= index < len(names) else str(index)
