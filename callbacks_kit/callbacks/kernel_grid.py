"""KernelGrid: the first convolution's kernels as an image grid."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from callbacks_kit.cadence import due
from callbacks_kit.callbacks.base import Callback, Order
from callbacks_kit.errors import LayerNotFoundError, TrainerError
from callbacks_kit.inspection.image_summary import add_image
from callbacks_kit.inspection.probe import normalize_each
from callbacks_kit.inspection.render import grid, upscale
from callbacks_kit.layers import find_modules, first_conv, resolve_module

if TYPE_CHECKING:
    from callbacks_kit.trainer import Trainer


class KernelGrid(Callback):
    """Convolution kernels of chosen layers as image grids (`kernels/<layer>`).

    Each kernel (one output channel) is normalised on its own. A layer with 3 input
    channels shows one colour tile per kernel; deeper layers show one row per kernel
    and one grey tile per input channel. Logged at the start and every few epochs.

    Args:
        layers: Names of `nn.Conv2d` layers in `model.named_modules()`; default: the first one.
        every_n_epochs: Epochs between logs.
        max_kernels: Kernels (output channels) shown per layer.
        max_channels: Input channels shown per kernel in deeper layers.
        tile_size: Smallest side of a colour tile in pixels (grey tiles get half).
    """

    order = Order.INSPECT

    def __init__(
        self,
        layers: Sequence[str] | None = None,
        every_n_epochs: int = 1,
        max_kernels: int = 64,
        max_channels: int = 16,
        tile_size: int = 24,
    ) -> None:
        if every_n_epochs < 1 or max_kernels < 1 or max_channels < 1:
            raise TrainerError("every_n_epochs, max_kernels and max_channels must be at least 1")
        self.layers = list(layers) if layers is not None else None
        self.every_n_epochs = every_n_epochs
        self.max_kernels = max_kernels
        self.max_channels = max_channels
        self.tile_size = tile_size

    def on_fit_start(self, trainer: Trainer) -> None:
        model = trainer.unwrapped_model
        self.layers = self.layers or [first_conv(model)]
        for name in self.layers:  # checked on every process, so a bad name fails everywhere
            module = resolve_module(model, name)
            if not isinstance(module, nn.Conv2d):
                convs = [conv for conv, _ in find_modules(model, nn.Conv2d)]
                shown = ", ".join(convs[:6]) + (", ..." if len(convs) > 6 else "")
                raise LayerNotFoundError(
                    f"KernelGrid: layer {name!r} is a {type(module).__name__}, not an nn.Conv2d; kernels are drawn "
                    f"from conv layers: {shown or 'none in this model'}"
                )
        self.log(trainer)

    def on_epoch_end(self, trainer: Trainer) -> None:
        if due(trainer.state.epoch, self.every_n_epochs):
            self.log(trainer)

    def log(self, trainer: Trainer) -> None:
        """Write every layer's grid now (main process only)."""
        if trainer.tb_writer is None or not self.layers:
            return
        model = trainer.unwrapped_model
        for name in self.layers:
            weight = resolve_module(model, name).weight
            assert isinstance(weight, torch.Tensor)  # an nn.Conv2d's (checked at fit start)
            image = self.kernel_image(weight)
            add_image(trainer.tb_writer, f"kernels/{name}", image, trainer.state.global_step)

    def kernel_image(self, weight: torch.Tensor) -> torch.Tensor:
        """A `(3, H, W)` grid of a conv weight `(out, in, kh, kw)`."""
        kernels = weight.detach().float()[: self.max_kernels]
        kernels = normalize_each(kernels, dims=(1, 2, 3))  # each kernel on its own scale
        if kernels.shape[1] == 3:
            return grid(upscale(kernels, self.tile_size))
        rows, columns = kernels.shape[0], min(kernels.shape[1], self.max_channels)
        tiles = kernels[:, :columns].reshape(rows * columns, 1, *kernels.shape[-2:])
        return grid(upscale(tiles, max(1, self.tile_size // 2)), columns=columns, padding=1)
