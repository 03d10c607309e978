"""Built-in metrics: callables `(outputs, targets) -> scalar tensor`, averaged per sample."""

from __future__ import annotations

import torch


def accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Fraction of correct predictions.

    Multi-class logits `(N, C)` use argmax; a single logit per sample (`(N,)` or `(N, 1)`)
    is read as binary with a threshold at 0.
    """
    if outputs.ndim >= 2 and outputs.shape[1] > 1:
        predictions = outputs.argmax(dim=1)
    else:
        predictions = (outputs.reshape(targets.shape) > 0).long()
    return (predictions == targets.long()).float().mean()
