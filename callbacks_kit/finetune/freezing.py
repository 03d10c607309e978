"""Freezing and unfreezing modules: no gradient, no update, BatchNorm statistics fixed."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from callbacks_kit.compat import BATCH_NORMS
from callbacks_kit.errors import FinetuneError


def freeze(modules: nn.Module | Iterable[nn.Module], train_bn: bool = False) -> None:
    """Stop training `modules`: `requires_grad=False` and gradients dropped.

    The optimizer skips parameters whose grad is None, so frozen weights get no update,
    no weight decay and no momentum. BatchNorm layers go to eval mode so their running
    statistics stay fixed; `model.train()` undoes that, which is why the `FreezeUnfreeze`
    callback re-applies it every batch. Under DDP call `trainer.refresh_trainable()` after.

    Args:
        modules: A module or modules; all their submodules are frozen.
        train_bn: Keep BatchNorm layers trainable and in training mode (as fastai and
            Lightning do when asked), for domains far from the pretraining data.
    """
    for module in _modules(modules):
        if isinstance(module, BATCH_NORMS) and train_bn:
            _set_trainable(module, True)
            module.train()
            continue
        _set_trainable(module, False)
        if isinstance(module, BATCH_NORMS):
            module.eval()


def unfreeze(modules: nn.Module | Iterable[nn.Module]) -> None:
    """Train `modules` again: `requires_grad=True` and BatchNorm back in training mode.

    Under DDP call `trainer.refresh_trainable()` after, or the replicas drift apart.
    """
    for module in _modules(modules):
        _set_trainable(module, True)
        if isinstance(module, BATCH_NORMS):
            module.train()


def _modules(modules: nn.Module | Iterable[nn.Module]) -> list[nn.Module]:
    roots = [modules] if isinstance(modules, nn.Module) else list(modules)
    for root in roots:
        if not isinstance(root, nn.Module):
            raise FinetuneError(f"expected nn.Module objects, got {type(root).__name__}; pass model.layer4, not a name")
    return [module for root in roots for module in root.modules()]


def _set_trainable(module: nn.Module, trainable: bool) -> None:
    for param in module.parameters(recurse=False):
        param.requires_grad_(trainable)
        if not trainable:
            param.grad = None
