"""SegmentationOverlays: fixed validation images as image | truth | prediction | errors, every few epochs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from callbacks_kit.batches import side_forward
from callbacks_kit.cadence import due, warn_once
from callbacks_kit.callbacks.base import Callback, Order
from callbacks_kit.data.normalization import IMAGENET_MEAN, IMAGENET_STD
from callbacks_kit.errors import TrainerError
from callbacks_kit.inspection.probe import display_images, is_image_batch, probe_outputs
from callbacks_kit.inspection.segmentation import (
    check_segmentation_at_fit_start,
    covering_samples,
    samples_batch,
    validation_dataset,
)
from callbacks_kit.inspection.segmentation_image import overlay_grid, overlay_rows
from callbacks_kit.segmentation_metrics import (
    IGNORE_INDEX,
    class_predictions,
    image_iou,
    image_overlaps,
    segmentation_logits,
)

if TYPE_CHECKING:
    from callbacks_kit.trainer import Trainer


class SegmentationOverlays(Callback):
    """Fixed validation images with their truth, the model's prediction and its errors (`segmentation/overlays`).

    At fit start the main process picks `num_images` validation samples that together show
    as many classes as possible (from the masks; see `inspection.segmentation.covering_samples`),
    or takes `indices`. Every `every_n_epochs` epochs it runs them through the bare model in
    eval mode (a forked RNG: the run is not changed) and writes one image: a row per sample
    of four tiles, the image, the truth and the prediction blended in one fixed palette, and
    the errors (wrong pixels magenta, a colour no class has; ignored ones in the void colour), each row titled with the
    sample's index and IoU, and a legend of the class names under the rows.

    Args:
        num_images: Samples shown.
        class_names: One name per class (the legend); default the dataset's `classes`, else indices.
        ignore_index: Mask value counted nowhere (None: none).
        every_n_epochs: Epochs between images.
        indices: Validation sample indices to show instead of the covering pick.
        tile_size: Each tile is enlarged (nearest) to at least this many pixels wide.
        mean: Normalisation mean of the inputs, undone to show them; None stretches each image.
        std: Normalisation std of the inputs.

    Attributes:
        indices: The samples shown (known from `on_fit_start` on, on the main process).
    """

    order = Order.INSPECT

    def __init__(
        self,
        num_images: int = 8,
        class_names: Sequence[str] | None = None,
        ignore_index: int | None = IGNORE_INDEX,
        every_n_epochs: int = 1,
        indices: Sequence[int] | None = None,
        tile_size: int = 128,
        mean: Sequence[float] | None = IMAGENET_MEAN,
        std: Sequence[float] | None = IMAGENET_STD,
    ) -> None:
        if min(num_images, every_n_epochs) < 1:
            raise TrainerError(
                f"SegmentationOverlays: num_images and every_n_epochs must be at least 1, got {num_images} and "
                f"{every_n_epochs}"
            )
        self.num_images = num_images
        self.class_names = list(class_names) if class_names is not None else None
        self.ignore_index = ignore_index
        self.every_n_epochs = every_n_epochs
        self.indices = list(indices) if indices is not None else None
        self.tile_size, self.mean, self.std = tile_size, mean, std
        self._dataset: object = None

    def on_fit_start(self, trainer: Trainer) -> None:
        if trainer.val_loader is None:
            if trainer.is_main_process:
                warn_once(self, "no-val", "SegmentationOverlays: fit has no val_loader, so there are no images to show")
            return
        self.class_names = check_segmentation_at_fit_start(trainer, self, self.class_names)
        if not trainer.is_main_process:
            return
        dataset = validation_dataset(trainer)
        assert dataset is not None  # the check above read two samples by index
        size = len(dataset)  # type: ignore[arg-type]  # validation_dataset returns sized datasets
        if self.indices is not None:
            outside = [i for i in self.indices if not 0 <= i < size]
            if outside:
                raise TrainerError(
                    f"SegmentationOverlays: indices {outside} are outside the validation set of {size} samples"
                )
        else:
            self.indices = covering_samples(dataset, self.num_images, len(self.class_names))
        self._dataset = dataset

    def on_epoch_end(self, trainer: Trainer) -> None:
        if trainer.tb_writer is None or not self.indices or not due(trainer.state.epoch, self.every_n_epochs):
            return
        trainer.tb_writer.add_image("segmentation/overlays", self.render(trainer), trainer.state.global_step)

    @torch.no_grad()
    def render(self, trainer: Trainer) -> torch.Tensor:
        """The `(3, H, W)` grid of the fixed samples as the model segments them now."""
        assert self.indices is not None and self.class_names is not None
        inputs, masks = samples_batch(trainer, self._dataset, self.indices)
        if not is_image_batch(inputs):
            raise TrainerError("SegmentationOverlays: the inputs are not (N, C, H, W) images")
        model = trainer.unwrapped_model
        with side_forward(model, trainer.device):
            logits = segmentation_logits(probe_outputs(trainer, model, inputs, masks))
        assert logits is not None  # checked at fit start
        predicted, classes = class_predictions(logits.float())
        scores = image_iou(*image_overlaps(predicted, masks, classes, self.ignore_index)).tolist()
        tiles = overlay_rows(display_images(inputs, self.mean, self.std), masks, predicted, self.ignore_index)
        captions = [f"#{index}  IoU {score:.2f}" for index, score in zip(self.indices, scores, strict=True)]
        return overlay_grid(tiles.cpu(), captions, self.class_names, self.ignore_index, self.tile_size)
