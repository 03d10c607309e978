"""Built-in metrics (callables `(outputs, targets) -> scalar tensor`, averaged per sample) and metric objects.

`Trainer(metrics=...)` also takes objects with state, as `torchmetrics.Metric`: updated with
every gathered validation batch and computed once at the end.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch


def hard_labels(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Class indices from targets that may be soft.

    Floating-point targets shaped like multi-class logits `(N, C)` are class probabilities
    (MixUp, CutMix, label smoothing): their argmax is the label. Anything else is returned
    as it is.
    """
    soft = targets.is_floating_point() and targets.ndim == outputs.ndim >= 2 and targets.shape == outputs.shape
    return targets.argmax(dim=1) if soft and outputs.shape[1] > 1 else targets


def accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Fraction of correct predictions.

    Multi-class logits `(N, C)` use argmax, against class indices `(N,)` or the argmax of
    class probabilities `(N, C)`; a single logit per sample (`(N,)` or `(N, 1)`) is read as
    binary with a threshold at 0, against 0/1 targets (soft ones rounded at 0.5).
    """
    if outputs.ndim >= 2 and outputs.shape[1] > 1:
        return (outputs.argmax(dim=1) == hard_labels(outputs, targets).long()).float().mean()
    predictions = (outputs.reshape(targets.shape) > 0).long()
    truth = (targets > 0.5).long() if targets.is_floating_point() else targets.long()
    return (predictions == truth).float().mean()


def confusion_counts(predictions: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """`(num_classes, num_classes)` counts, rows true classes and columns predicted ones (as scikit-learn's)."""
    index = targets.long().reshape(-1) * num_classes + predictions.long().reshape(-1)
    return torch.bincount(index, minlength=num_classes * num_classes).view(num_classes, num_classes)


def per_class_report(confusion: torch.Tensor) -> dict[str, torch.Tensor]:
    """Precision, recall, F1 and support of each class from a confusion matrix (rows: true classes).

    A class never predicted has precision 0, one without samples recall 0, and F1 is 0 where
    precision and recall are both 0 (scikit-learn's `zero_division=0`).

    Returns:
        `{"precision", "recall", "f1"}` as float64 tensors and `"support"` as int64, one value per class.
    """
    counts = confusion.double()
    true_pos = counts.diag()
    predicted, support = counts.sum(dim=0), counts.sum(dim=1)
    precision = torch.where(predicted > 0, true_pos / predicted.clamp_min(1), torch.zeros_like(true_pos))
    recall = torch.where(support > 0, true_pos / support.clamp_min(1), torch.zeros_like(true_pos))
    total = precision + recall
    f1 = torch.where(total > 0, 2 * precision * recall / total.clamp_min(1e-300), torch.zeros_like(total))
    return {"precision": precision, "recall": recall, "f1": f1, "support": confusion.sum(dim=1).long()}


class StatefulMetric(Protocol):
    """A metric object with state, as `torchmetrics.Metric`: `update(outputs, targets)`, `compute()`, `reset()`."""

    def update(self, outputs: Any, targets: Any) -> None:
        """Add one (gathered) batch to the state."""

    def compute(self) -> Any:
        """The value over everything added since the last reset: one number."""

    def reset(self) -> None:
        """Forget the state (at each validation start)."""


def is_stateful_metric(metric: object) -> bool:
    """True for an object with `update`, `compute` and `reset` methods (a `torchmetrics.Metric`)."""
    return all(callable(getattr(metric, name, None)) for name in ("update", "compute", "reset"))


def _never() -> bool:
    return False


def compute_gathered(metric: StatefulMetric) -> Any:
    """`metric.compute()` without its own cross-process sync.

    The trainer updates every process's metric with the gathered batches (each sample once,
    the uneven last batch trimmed by `gather_for_metrics`), so every process already holds
    the whole set; a torchmetrics sync would count it once per process. torchmetrics asks
    `distributed_available_fn` (a constructor option) whether to sync: it answers no here.
    """
    if not hasattr(metric, "distributed_available_fn"):
        return metric.compute()
    previous = metric.distributed_available_fn  # type: ignore[attr-defined]
    metric.distributed_available_fn = _never  # type: ignore[attr-defined]
    try:
        return metric.compute()
    finally:
        metric.distributed_available_fn = previous  # type: ignore[attr-defined]
