"""Image callbacks: convolution kernels as grids, and feature maps through forward hooks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from callbacks_kit.callbacks.base import Callback
from callbacks_kit.callbacks.probe import (
    Probe,
    display_images,
    due,
    is_image_batch,
    normalize_each,
    probe_batch,
    run_model,
    side_forward,
    warn_once,
)
from callbacks_kit.callbacks.render import grid, upscale
from callbacks_kit.data import IMAGENET_MEAN, IMAGENET_STD
from callbacks_kit.hooks import ActivationCapture
from callbacks_kit.layers import LayerNotFoundError, find_modules, first_conv, resolve_module, spread_conv_blocks

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

    order = 120

    def __init__(
        self,
        layers: Sequence[str] | None = None,
        every_n_epochs: int = 1,
        max_kernels: int = 64,
        max_channels: int = 16,
        tile_size: int = 24,
    ) -> None:
        if every_n_epochs < 1 or max_kernels < 1 or max_channels < 1:
            raise ValueError("every_n_epochs, max_kernels and max_channels must be at least 1")
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
            image = self.kernel_image(resolve_module(model, name).weight)
            trainer.tb_writer.add_image(f"kernels/{name}", image, trainer.state.global_step)

    def kernel_image(self, weight: torch.Tensor) -> torch.Tensor:
        """A `(3, H, W)` grid of a conv weight `(out, in, kh, kw)`."""
        kernels = weight.detach().float()[: self.max_kernels]
        kernels = normalize_each(kernels, dims=(1, 2, 3))  # each kernel on its own scale
        if kernels.shape[1] == 3:
            return grid(upscale(kernels, self.tile_size))
        rows, columns = kernels.shape[0], min(kernels.shape[1], self.max_channels)
        tiles = kernels[:, :columns].reshape(rows * columns, 1, *kernels.shape[-2:])
        return grid(upscale(tiles, max(1, self.tile_size // 2)), columns=columns, padding=1)


class FeatureMaps(Callback):
    """Feature maps of named layers on a fixed probe batch, every few epochs.

    The probe batch is the first `num_images` validation samples, read once at the
    start. Forward hooks are attached to the bare (unwrapped) model for the probe
    forward only, in eval mode and without gradients, and removed right after: no hook
    stays on the model, nothing piles up over a long run, and training steps pay
    nothing. Only the main process runs the probe and writes.

    Tags: `feature_maps/image<i>/0_input` (once), then `feature_maps/image<i>/<k>_<layer>`
    from input to output, every channel a grey tile normalised on its own.

    Args:
        layers: Layer names; default: `num_layers` convolutional stages spread from
            input to output (e.g. `conv1, layer1, layer3, layer4` in a ResNet).
        num_layers: How many layers the default picks.
        num_images: Probe images shown (one grid per image and layer).
        every_n_epochs: Epochs between logs.
        max_channels: Channels shown per layer.
        tile_size: Smallest side of a channel tile in pixels (small maps are enlarged).
        mean: Normalisation mean of the inputs, undone to show them; None stretches each image.
        std: Normalisation std of the inputs.
    """

    order = 130

    def __init__(
        self,
        layers: Sequence[str] | None = None,
        num_layers: int = 4,
        num_images: int = 2,
        every_n_epochs: int = 1,
        max_channels: int = 64,
        tile_size: int = 32,
        mean: Sequence[float] | None = IMAGENET_MEAN,
        std: Sequence[float] | None = IMAGENET_STD,
    ) -> None:
        if min(num_layers, num_images, every_n_epochs, max_channels) < 1:
            raise ValueError("num_layers, num_images, every_n_epochs and max_channels must be at least 1")
        self.layers = list(layers) if layers is not None else None
        self.num_layers = num_layers
        self.num_images = num_images
        self.every_n_epochs = every_n_epochs
        self.max_channels = max_channels
        self.tile_size = tile_size
        self.mean, self.std = mean, std
        self._probe: Probe | None = None
        self._inputs_logged = False

    def on_fit_start(self, trainer: Trainer) -> None:
        model = trainer.unwrapped_model
        self.layers = self.layers or spread_conv_blocks(model, self.num_layers)
        for name in self.layers:
            resolve_module(model, name)
        if trainer.tb_writer is not None:
            self._probe = probe_batch(trainer, self.num_images)
            if self._probe is None:
                warn_once(self, "probe", "FeatureMaps: the validation dataset cannot be indexed; no feature maps")

    def on_epoch_end(self, trainer: Trainer) -> None:
        if due(trainer.state.epoch, self.every_n_epochs):
            self.log(trainer)

    def log(self, trainer: Trainer) -> None:
        """Run the probe forward with hooks and write the grids now (main process only)."""
        writer, probe = trainer.tb_writer, self._probe
        if writer is None or probe is None or not self.layers:
            return
        inputs, targets = probe
        model, step = trainer.unwrapped_model, trainer.state.global_step
        with side_forward(model, trainer.device), torch.no_grad(), ActivationCapture(model, self.layers) as capture:
            run_model(trainer, model, inputs, targets)
        if not self._inputs_logged and is_image_batch(inputs):
            for i, image in enumerate(display_images(inputs, self.mean, self.std)):
                writer.add_image(f"feature_maps/image{i}/0_input", upscale(image[None], 128)[0], step)
            self._inputs_logged = True
        for k, name in enumerate(self.layers, start=1):
            maps = capture.outputs.get(name)
            if not (isinstance(maps, torch.Tensor) and maps.ndim == 4):
                shape = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
                warn_once(self, name, f"FeatureMaps: layer {name!r} gave {shape}, not (N, C, H, W) maps; skipped")
                continue
            for i, channels in enumerate(maps[:, : self.max_channels].float()):
                tiles = normalize_each(channels[:, None], dims=(1, 2, 3))
                writer.add_image(f"feature_maps/image{i}/{k}_{name}", grid(upscale(tiles, self.tile_size)), step)
        capture.clear()
