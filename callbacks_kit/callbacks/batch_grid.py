"""BatchGrid: the training batch as the model receives it, un-normalised, with its labels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from callbacks_kit.cadence import warn_once
from callbacks_kit.callbacks.base import Callback, Order
from callbacks_kit.data.normalization import IMAGENET_MEAN, IMAGENET_STD
from callbacks_kit.errors import TrainerError
from callbacks_kit.inspection.image_summary import add_image
from callbacks_kit.inspection.probe import class_names_of, display_images, is_image_batch
from callbacks_kit.inspection.render import BLACK, captioned, grid, upscale

if TYPE_CHECKING:
    from callbacks_kit.trainer import Trainer


class BatchGrid(Callback):
    """The first training batch of the run (and of every `every_n_epochs`-th epoch) as one image.

    The batch is the one the forward received: after the data pipeline's augmentation and
    after any callback that replaced it in `on_before_forward` (MixUp, CutMix), so a wrong
    normalisation or an augmentation that destroys the object shows at step 0. Images are
    un-normalised with `mean` and `std`; each tile is captioned with its label (hard
    targets) or its two largest class probabilities (soft targets).

    The first `num_images` images are copied on the device and written at the next log step
    or epoch end, so the step itself reads nothing back. Main process only; tag
    `train_batch`, at the step of the batch. Inputs that are not `(N, C, H, W)` images get a
    warning, once, and no grid.

    Args:
        every_n_epochs: Epochs between grids (the first batch of epochs 0, N, 2N...); None:
            only the first epoch.
        num_images: Images shown.
        class_names: Label names; default the training dataset's `classes`, else indices.
        mean: Normalisation mean of the inputs, undone to show them; None stretches each image.
        std: Normalisation std of the inputs.
        tile_size: Smallest side of a tile in pixels (small images are enlarged).
    """

    order = Order.INSPECT

    def __init__(
        self,
        every_n_epochs: int | None = None,
        num_images: int = 16,
        class_names: Sequence[str] | None = None,
        mean: Sequence[float] | None = IMAGENET_MEAN,
        std: Sequence[float] | None = IMAGENET_STD,
        tile_size: int = 96,
    ) -> None:
        if every_n_epochs is not None and every_n_epochs < 1:
            raise TrainerError(f"BatchGrid: every_n_epochs must be at least 1 or None, got {every_n_epochs}")
        if num_images < 1 or tile_size < 1:
            raise TrainerError(f"BatchGrid: num_images and tile_size must be at least 1, got {num_images}, {tile_size}")
        self.every_n_epochs = every_n_epochs
        self.num_images = num_images
        self.class_names = list(class_names) if class_names is not None else None
        self.mean, self.std = mean, std
        self.tile_size = tile_size
        self._epoch_shown = -1
        self._pending: tuple[int, torch.Tensor, Any] | None = None

    def on_fit_start(self, trainer: Trainer) -> None:
        if self.class_names is None:
            self.class_names = class_names_of(trainer)

    def on_train_batch_end(self, trainer: Trainer) -> None:
        state = trainer.state
        if trainer.tb_writer is not None and self._epoch_shown != state.epoch and self._due(state.epoch):
            self._epoch_shown = state.epoch
            inputs, targets = trainer.last_inputs, trainer.last_targets
            if not is_image_batch(inputs):
                shape = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
                warn_once(self, "inputs", f"BatchGrid: training inputs are {shape}, not (N, C, H, W) images; no grid")
            else:
                images = inputs[: self.num_images].detach().clone()
                labels = targets[: self.num_images].detach().clone() if isinstance(targets, torch.Tensor) else None
                self._pending = (state.global_step, images, labels)
        if state.is_log_step:
            self.flush(trainer)

    def on_epoch_end(self, trainer: Trainer) -> None:
        self.flush(trainer)

    def on_teardown(self, trainer: Trainer) -> None:
        self._pending = None

    def flush(self, trainer: Trainer) -> None:
        """Write the pending grid now (a read of the device)."""
        writer, pending = trainer.tb_writer, self._pending
        if writer is None or pending is None:
            return
        self._pending = None
        step, images, labels = pending
        add_image(writer, "train_batch", self.image(images, labels), step)

    def image(self, images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """The `(3, H, W)` grid: un-normalised tiles, each with its label above it."""
        shown = upscale(display_images(images, self.mean, self.std).cpu(), self.tile_size)
        captions = self.captions(labels, len(shown))
        tiles = torch.stack([captioned(tile, [(text, BLACK)]) for tile, text in zip(shown, captions, strict=True)])
        return grid(tiles)

    def captions(self, labels: torch.Tensor | None, count: int) -> list[str]:
        """One line per image: the class name, or the two most likely classes of a soft target."""
        if labels is None:
            return [""] * count
        labels = labels.cpu()
        if labels.ndim == 2 and labels.is_floating_point():
            top = labels.float().topk(min(2, labels.shape[1]), dim=1)
            return [
                " / ".join(f"{self._name(int(c))} {p:.2f}" for p, c in zip(ps.tolist(), cs.tolist(), strict=True))
                for ps, cs in zip(top.values, top.indices, strict=True)
            ]
        if labels.ndim == 1:
            return [self._name(int(c)) for c in labels.tolist()]
        return [""] * count

    def _name(self, index: int) -> str:
        names = self.class_names
        return names[index] if names is not None and 0 <= index < len(names) else str(index)

    def _due(self, epoch: int) -> bool:
        return epoch == 0 if self.every_n_epochs is None else epoch % self.every_n_epochs == 0
