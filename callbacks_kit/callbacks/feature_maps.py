"""FeatureMaps: activations of chosen layers on fixed probe images, captured with forward hooks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from callbacks_kit.batches import side_forward
from callbacks_kit.cadence import due, warn_once
from callbacks_kit.callbacks.base import Callback, Order
from callbacks_kit.data.normalization import IMAGENET_MEAN, IMAGENET_STD
from callbacks_kit.errors import TrainerError
from callbacks_kit.hooks import ActivationCapture
from callbacks_kit.inspection.image_summary import add_image
from callbacks_kit.inspection.layer_sizes import output_sizes, suggested_layer, too_small, visible_blocks
from callbacks_kit.inspection.probe import (
    Probe,
    display_images,
    is_image_batch,
    normalize_each,
    probe_batch,
    probe_outputs,
)
from callbacks_kit.inspection.render import grid, upscale
from callbacks_kit.layers import resolve_module, spread, spread_conv_blocks

if TYPE_CHECKING:
    from callbacks_kit.trainer import Trainer


class FeatureMaps(Callback):
    """Feature maps of named layers on a fixed probe batch, every few epochs.

    The probe batch is `num_images` validation samples spread over the classes (the first
    of each class in turn), read once at the start. Forward hooks are attached to the
    bare (unwrapped) model for the probe forward only, in eval mode and without
    gradients, and removed right after: no hook
    stays on the model, nothing piles up over a long run, and training steps pay
    nothing. Only the main process runs the probe and writes.

    Tags: `feature_maps/image<i>/0_input` (once), then `feature_maps/image<i>/<k>_<layer>`
    from input to output, every channel a grey tile normalised on its own.

    Args:
        layers: Layer names; default: `num_layers` convolutional stages spread from the
            input to the last stage whose output is at least 4x4 on the probe images
            (`conv1, layer1, layer3, layer4` of a ResNet at 224 px; `conv1, layer1, layer2`
            at 32 px). A named layer whose output is 1x1 gets a warning.
        num_layers: How many layers the default picks.
        num_images: Probe images shown (one grid per image and layer).
        every_n_epochs: Epochs between logs.
        max_channels: Channels shown per layer.
        tile_size: Smallest side of a channel tile in pixels (small maps are enlarged).
        mean: Normalisation mean of the inputs, undone to show them; None stretches each image.
        std: Normalisation std of the inputs.
    """

    order = Order.INSPECT

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
            raise TrainerError("num_layers, num_images, every_n_epochs and max_channels must be at least 1")
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
        # Checked on every process, so a bad name (or a model without convolutions) fails everywhere.
        for name in self.layers or []:
            resolve_module(model, name)
        structural = self.layers or spread_conv_blocks(model, self.num_layers)
        if trainer.tb_writer is None:
            return
        self._probe = probe_batch(trainer, self.num_images, spread=True)
        if self._probe is None:
            self.layers = structural
            warn_once(self, "probe", "FeatureMaps: the validation dataset cannot be indexed; no feature maps")
            return
        if self.layers is None:
            self.layers = spread(visible_blocks(trainer, *self._probe), self.num_layers)
            return
        sizes = output_sizes(trainer, self.layers, *self._probe)
        collapsed = [name for name, size in sizes.items() if size is not None and max(size) == 1]
        if collapsed:
            suggestion = suggested_layer(trainer, *self._probe)
            for name in collapsed:
                warn_once(self, f"small:{name}", f"FeatureMaps: {too_small(name, sizes[name], suggestion)}")

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
            probe_outputs(trainer, model, inputs, targets)
        if not self._inputs_logged and is_image_batch(inputs):
            for i, image in enumerate(display_images(inputs, self.mean, self.std)):
                add_image(writer, f"feature_maps/image{i}/0_input", upscale(image[None], 128)[0], step)
            self._inputs_logged = True
        for k, name in enumerate(self.layers, start=1):
            maps = capture.outputs.get(name)
            if not (isinstance(maps, torch.Tensor) and maps.ndim == 4):
                shape = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
                warn_once(self, name, f"FeatureMaps: layer {name!r} gave {shape}, not (N, C, H, W) maps; skipped")
                continue
            for i, channels in enumerate(maps[:, : self.max_channels].float()):
                tiles = normalize_each(channels[:, None], dims=(1, 2, 3))
                add_image(writer, f"feature_maps/image{i}/{k}_{name}", grid(upscale(tiles, self.tile_size)), step)
        capture.clear()
