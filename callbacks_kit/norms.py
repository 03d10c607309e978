"""Gradient norms on the device: the global one (`train/grad_norm`) and one per group of parameters."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from callbacks_kit.compat import grad_norms


def total_grad_norm(parameters: Iterable[torch.Tensor]) -> torch.Tensor:
    """The L2 norm of all gradients together, as `clip_grad_norm_` computes it, without clipping.

    One fused kernel over every gradient, on their device; a zero scalar when no parameter
    has a gradient.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([n.to(grads[0].device) for n in grad_norms(grads)]))


def group_norms(groups: Sequence[Sequence[torch.Tensor]]) -> torch.Tensor:
    """The L2 norm of each group of tensors (a layer's gradients): one fused norm kernel, no host copy.

    Returns a float32 `(len(groups),)` tensor on the tensors' device; an empty group gets 0.
    """
    flat = [t for group in groups for t in group]
    if not flat:
        return torch.zeros(len(groups))
    device = flat[0].device
    squares = torch.stack([n.float().to(device) for n in grad_norms(flat)]) ** 2
    zero = torch.zeros((), device=device)
    sums, start = [], 0
    for group in groups:
        sums.append(squares[start : start + len(group)].sum() if group else zero)
        start += len(group)
    return torch.stack(sums).sqrt()
