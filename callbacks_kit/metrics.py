"""Built-in metrics (callables `(outputs, targets) -> scalar tensor`, averaged per sample) and metric objects.

`Trainer(metrics=...)` also takes objects with state, as `torchmetrics.Metric`: updated with
every gathered validation batch and computed once at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import torch

if TYPE_CHECKING:
    from typing_extensions import TypeIs


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


class StatefulMetric(Protocol):
    """A metric object with state, as `torchmetrics.Metric`: `update(outputs, targets)`, `compute()`, `reset()`."""

    def update(self, outputs: Any, targets: Any) -> None:
        """Add one (gathered) batch to the state."""

    def compute(self) -> Any:
        """The value over everything added since the last reset: one number."""

    def reset(self) -> None:
        """Forget the state (at each validation start)."""


def is_stateful_metric(metric: object) -> TypeIs[StatefulMetric]:
    """True for an object with `update`, `compute` and `reset` methods (a `torchmetrics.Metric`)."""
    return all(callable(getattr(metric, name, None)) for name in ("update", "compute", "reset"))


# What `Trainer(metrics=...)` takes for each name: a function of `(outputs, targets)`, or a metric object.
Metric = Callable[[Any, Any], torch.Tensor] | StatefulMetric


def metrics_on(device: torch.device, metrics: Mapping[str, Metric]) -> dict[str, Metric]:
    """`metrics` as a dict, its metric objects that are modules (torchmetrics) moved to `device`."""
    for metric in metrics.values():
        if is_stateful_metric(metric) and isinstance(metric, torch.nn.Module):
            metric.to(device)
    return dict(metrics)


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
    previous = metric.distributed_available_fn
    metric.distributed_available_fn = _never
    try:
        return metric.compute()
    finally:
        metric.distributed_available_fn = previous
