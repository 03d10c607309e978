"""Batch helpers shared by the loop and the probes: sample counts, and a forward that leaves training as it was."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


def batch_size(inputs: Any, targets: Any) -> int:
    """Samples in a batch: the first dimension of the targets, else of the inputs (tensors, dicts, lists)."""
    for item in (targets, inputs):
        if isinstance(item, torch.Tensor) and item.ndim > 0:
            return int(item.shape[0])
        if isinstance(item, Mapping):
            for value in item.values():
                if isinstance(value, torch.Tensor) and value.ndim > 0:
                    return int(value.shape[0])
        if isinstance(item, (list, tuple)) and item:
            return len(item)
    return 1


def len_or_none(loader: Any) -> int | None:
    """`len(loader)`, or None for an iterable without a length."""
    try:
        return len(loader)
    except TypeError:
        return None


@contextmanager
def side_forward(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Eval mode and a forked RNG for a forward that is not training; train mode and the RNG come back.

    The pre-training sanity check and every probe (Grad-CAM, feature maps, the graph) run
    inside it, so looking at the model never changes the run.
    """
    was_training = model.training
    devices = [device] if device.type == "cuda" else []
    model.eval()
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        model.train(was_training)
