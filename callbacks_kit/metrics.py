"""Built-in metrics: callables `(outputs, targets) -> scalar tensor`, averaged per sample."""

from __future__ import annotations

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
