"""Removable forward-hook capture: hooks that live only as long as a `with` block."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from callbacks_kit.compat import has_forward_hooks
from callbacks_kit.layers import resolve_module


class ActivationCapture:
    """Keeps the outputs of named modules during forwards, through forward hooks it removes.

    Hooks are attached on `__enter__` (or `attach()`) and removed on `__exit__` (or
    `remove()`), also when the forward fails, so nothing stays on the model:

        with ActivationCapture(model, ["layer1", "layer4"]) as capture:
            model(images)
        capture.outputs["layer4"]  # the hooks are already gone here

    Only the latest output of each module is kept (a module called twice keeps its
    second output), so memory does not grow with the number of forwards.

    Args:
        model: The module to look into; use the unwrapped model, not a DDP or compiled wrapper.
        names: Layer names from `model.named_modules()`; an unknown name raises
            `LayerNotFoundError` listing the closest real ones.
        detach: Store detached outputs (for display). False keeps them in the autograd
            graph, e.g. to take gradients with respect to them (Grad-CAM).
        clone: Keep the outputs safe from in-place operations further on (such as
            `ReLU(inplace=True)` right after a convolution): a detached output is copied;
            an attached one is kept and the model continues with a copy of it.
        reduce: Keep `reduce(name, output.detach())` instead of the output, computed inside the hook
            (statistics of an activation that an in-place operation overwrites next);
            `detach` and `clone` are then ignored.
    """

    def __init__(
        self,
        model: nn.Module,
        names: Sequence[str],
        detach: bool = True,
        clone: bool = True,
        reduce: Callable[[str, torch.Tensor], Any] | None = None,
    ) -> None:
        known = dict(model.named_modules())  # one walk for every name (LayerStats looks at every layer)
        self.modules = {name: known[name] if name in known else resolve_module(model, name) for name in names}
        self.detach = detach
        self.clone = clone
        self.reduce = reduce
        self.outputs: dict[str, Any] = {}
        self._handles: list[RemovableHandle] = []

    @property
    def attached(self) -> bool:
        """True while the hooks are on the model."""
        return bool(self._handles)

    def attach(self) -> ActivationCapture:
        """Register one forward hook per module (a no-op when already attached)."""
        if not self._handles:
            self.outputs = {}
            self._handles = [module.register_forward_hook(self._hook(name)) for name, module in self.modules.items()]
        return self

    def remove(self) -> None:
        """Remove every hook this capture registered; the captured outputs stay."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def clear(self) -> None:
        """Forget the captured outputs (and free their memory)."""
        self.outputs = {}

    def _hook(self, name: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            if not isinstance(output, torch.Tensor):
                self.outputs[name] = output
                return None
            if self.reduce is not None:
                self.outputs[name] = self.reduce(name, output.detach())
                return None
            if self.detach:
                self.outputs[name] = output.detach().clone() if self.clone else output.detach()
                return None
            self.outputs[name] = output
            return output.clone() if self.clone else None  # a returned value replaces the output

        return hook

    def __enter__(self) -> ActivationCapture:
        return self.attach()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.remove()

    def __del__(self) -> None:
        if getattr(self, "_handles", None):  # absent when __init__ failed
            self.remove()


def hooked_modules(model: nn.Module) -> list[str]:
    """Names of the submodules that carry forward or forward-pre hooks (to check for leaks)."""
    return [name or "<model>" for name, module in model.named_modules() if has_forward_hooks(module)]
