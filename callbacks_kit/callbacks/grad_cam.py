"""Grad-CAM: where the model looked for the class it predicted, on a fixed probe batch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from callbacks_kit.batches import side_forward
from callbacks_kit.cadence import due, warn_once, warned
from callbacks_kit.callbacks.base import Callback, Order
from callbacks_kit.data.normalization import IMAGENET_MEAN, IMAGENET_STD
from callbacks_kit.errors import TrainerError
from callbacks_kit.hooks import ActivationCapture
from callbacks_kit.inspection.image_summary import add_image
from callbacks_kit.inspection.layer_sizes import suggested_layer, too_small, visible_blocks
from callbacks_kit.inspection.probe import (
    Probe,
    class_names_of,
    display_images,
    is_image_batch,
    logits_of,
    probe_batch,
    probe_outputs,
)
from callbacks_kit.inspection.render import BLACK, GREEN, RED, captioned, grid, jet
from callbacks_kit.layers import last_conv_block, resolve_module
from callbacks_kit.metrics import hard_labels

if TYPE_CHECKING:
    from callbacks_kit.trainer import Trainer


class GradCAM(Callback):
    """Grad-CAM heatmaps for the predicted class, overlaid on the probe images (`gradcam/<layer>`).

    The probe batch is `num_images` validation samples spread over the classes (the first
    of each class in turn: `inspection.probe.spread_indices`), read once at the start, so
    every epoch shows the same images. Every few epochs the main process runs one forward
    and one backward on the bare model in eval mode, with a hook on `layer` for that
    forward only. The gradient is taken with
    `torch.autograd.grad` with respect to the layer's output, so parameters' `.grad`
    are untouched, and frozen layers work too. Each tile is titled with the predicted
    class and its probability (green when right, red when wrong) and the true class.

    Args:
        layer: Target layer name; default: the last convolutional stage whose output is at
            least 4x4 on the probe images (`layer4` of a ResNet at 224 px, `layer2` at 32 px).
            A named layer whose output is 1x1 gets a warning.
        num_images: Probe images shown.
        every_n_epochs: Epochs between logs.
        class_names: Names for the labels; default: the dataset's `classes`, else indices.
        image_size: Side of each tile in pixels (small inputs are enlarged to read the title).
        alpha: Weight of the heatmap over the image.
        columns: Tiles per row (2 keeps the grid narrow enough for TensorBoard to show it unscaled).
        mean: Normalisation mean of the inputs, undone to show them; None stretches each image.
        std: Normalisation std of the inputs.
    """

    order = Order.INSPECT

    def __init__(
        self,
        layer: str | None = None,
        num_images: int = 8,
        every_n_epochs: int = 1,
        class_names: Sequence[str] | None = None,
        image_size: int = 128,
        alpha: float = 0.45,
        columns: int = 2,
        mean: Sequence[float] | None = IMAGENET_MEAN,
        std: Sequence[float] | None = IMAGENET_STD,
    ) -> None:
        if min(num_images, every_n_epochs, columns) < 1:
            raise TrainerError("num_images, every_n_epochs and columns must be at least 1")
        self.layer = layer
        self.num_images = num_images
        self.every_n_epochs = every_n_epochs
        self.class_names = list(class_names) if class_names is not None else None
        self.image_size = image_size
        self.alpha = alpha
        self.columns = columns
        self.mean, self.std = mean, std
        self._probe: Probe | None = None

    def on_fit_start(self, trainer: Trainer) -> None:
        model = trainer.unwrapped_model
        # Checked on every process, so a bad name (or a model without convolutions) fails everywhere.
        if self.layer is not None:
            resolve_module(model, self.layer)
        structural = self.layer or last_conv_block(model)
        if trainer.tb_writer is None:
            return
        self.class_names = self.class_names or class_names_of(trainer)
        self._probe = probe_batch(trainer, self.num_images, spread=True)
        if self._probe is None or not is_image_batch(self._probe[0]):
            self._probe = None
            self.layer = structural
            warn_once(self, "probe", "GradCAM: needs an indexable validation dataset of (N, C, H, W) images")
            return
        self.layer = self.layer or visible_blocks(trainer, *self._probe)[-1]
        self.heatmaps(trainer, *self._probe)  # a layer or model that cannot work warns now, not after an epoch

    def on_epoch_end(self, trainer: Trainer) -> None:
        if due(trainer.state.epoch, self.every_n_epochs):
            self.log(trainer)

    def log(self, trainer: Trainer) -> None:
        """Compute the heatmaps and write the grid now (main process only)."""
        if trainer.tb_writer is None or self._probe is None or self.layer is None:
            return
        inputs, targets = self._probe
        result = self.heatmaps(trainer, inputs, targets)
        if result is None:
            return
        cams, probs = result
        tiles = self.tiles(inputs, targets, cams, probs)
        add_image(trainer.tb_writer, f"gradcam/{self.layer}", grid(tiles, self.columns), trainer.state.global_step)

    def heatmaps(
        self, trainer: Trainer, inputs: torch.Tensor, targets: object
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """`(cams (N, H, W) in [0, 1], probabilities (N, classes))`, or None if the model does not fit."""
        assert self.layer is not None
        model = trainer.unwrapped_model
        capture = ActivationCapture(model, [self.layer], detach=False)
        # The input requires grad so that activations do even under frozen layers.
        with side_forward(model, trainer.device), torch.enable_grad(), capture:
            logits = logits_of(probe_outputs(trainer, model, inputs.detach().requires_grad_(True), targets))
            activation = capture.outputs.get(self.layer)
            if logits is None or logits.ndim != 2 or logits.shape[1] < 2:
                warn_once(self, "logits", "GradCAM: the model must return (N, classes) logits; skipped")
                return None
            if not (isinstance(activation, torch.Tensor) and activation.ndim == 4 and activation.requires_grad):
                warn_once(self, "layer", f"GradCAM: layer {self.layer!r} gives no (N, C, H, W) map with grad; skipped")
                return None
            logits = logits.float()
            predicted = logits.argmax(dim=1, keepdim=True)
            (grads,) = torch.autograd.grad(logits.gather(1, predicted).sum(), activation)
        if max(activation.shape[-2:]) == 1 and not warned(self, "small"):  # a flat tint: say which layer is not
            message = too_small(self.layer, (1, 1), suggested_layer(trainer, inputs, targets))
            warn_once(self, "small", f"GradCAM: {message}")
        weights = grads.float().mean(dim=(2, 3), keepdim=True)  # channel importance: pooled gradients
        cams = F.relu((weights * activation.detach().float()).sum(dim=1, keepdim=True))
        cams = F.interpolate(cams, size=inputs.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        peak = cams.amax(dim=(1, 2), keepdim=True)
        cams = torch.where(peak > 0, cams / peak.clamp_min(1e-12), torch.zeros_like(cams))
        return cams.detach(), logits.detach().softmax(dim=1)

    def tiles(self, inputs: torch.Tensor, targets: object, cams: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """One captioned overlay per probe image, `(N, 3, H', W')`."""
        images = display_images(inputs, self.mean, self.std)
        overlays = ((1 - self.alpha) * images + self.alpha * jet(cams)).clamp(0, 1)
        overlays = F.interpolate(
            overlays, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False
        )
        if isinstance(targets, torch.Tensor):
            targets = hard_labels(probs, targets)  # class probabilities are titled by their most likely class
        labels = targets.tolist() if isinstance(targets, torch.Tensor) and targets.ndim == 1 else [None] * len(inputs)
        confidence, predicted = probs.max(dim=1)
        tiles = []
        for overlay, pred, conf, true in zip(
            overlays.cpu(), predicted.tolist(), confidence.tolist(), labels, strict=True
        ):
            colour = BLACK if true is None else GREEN if pred == true else RED
            lines = [(f"pred {self._name(pred)} {conf:.0%}", colour)]
            if true is not None:
                lines.append((f"true {self._name(int(true))}", BLACK))
            tiles.append(captioned(overlay, lines))
        return torch.stack(tiles)

    def _name(self, index: int) -> str:
        names = self.class_names
        return names[index] if names is not None and 0 <= index < len(names) else str(index)
