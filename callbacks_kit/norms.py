"""Gradient norms on the device: the global one (`train/grad_norm`), one per group of parameters, and a finite check."""

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


def finite_sums(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per tensor, whether a reduction of all its values is finite: a bool `(len(tensors),)` on their device.

    A NaN or an infinity makes its tensor's flag false; so does a reduction that overflowed
    from finite values, which a caller that must tell the two apart checks element by element.
    On a GPU, one fused norm kernel (`torch._foreach_norm`). On a CPU, where the foreach ops
    loop over the tensors, one sum per tensor accumulated in float32 at least: 2.4 times cheaper than
    the norms for ResNet-18's gradients (0.50 against 1.21 ms with 2 threads), and without the
    squares, which overflow for values above 1.8e19.
    """
    if not tensors:
        return torch.ones(0, dtype=torch.bool)
    if tensors[0].device.type == "cpu":
        reductions = [t.sum(dtype=torch.promote_types(t.dtype, torch.float32)) for t in tensors]
    else:
        reductions = grad_norms(list(tensors))
    return torch.stack(reductions).isfinite()


def all_finite(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Whether every value of `tensors` is finite (`finite_sums`), as a bool scalar on their device: no host sync."""
    return finite_sums(tensors).all()
