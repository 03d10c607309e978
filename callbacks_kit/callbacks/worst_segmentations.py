"""WorstSegmentations: the validation images with the lowest IoU, shown as image | truth | prediction | errors."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from callbacks_kit.cadence import warn_once
from callbacks_kit.callbacks.segmentation_view import SegmentationView
from callbacks_kit.data.normalization import IMAGENET_MEAN, IMAGENET_STD
from callbacks_kit.errors import TrainerError
from callbacks_kit.inspection.probe import display_images, is_image_batch
from callbacks_kit.inspection.segmentation_image import overlay_grid, overlay_rows
from callbacks_kit.segmentation_metrics import IGNORE_INDEX, class_predictions, image_iou, image_overlaps

if TYPE_CHECKING:
    from callbacks_kit.trainer import Trainer


class WorstSegmentations(SegmentationView):
    """The `k` validation images with the lowest IoU, across processes (`segmentation/worst/<prefix>`).

    An image's IoU is the mean over the classes in its truth or its prediction (ignored pixels
    left out). Each gathered validation batch (each sample once across processes) is scored on
    the device and merged into a running bottom-k of scores, positions, images, masks and
    predictions, so memory is bounded by `k` and no batch waits for the host. At the end the
    main process writes an image grid, worst first: each image with its truth and prediction
    overlaid and its errors in red, titled with its position in the validation order (the
    dataset index when the loader does not shuffle), its IoU and the classes it missed; and a
    markdown table of the same images. Of equal IoUs, the earlier image ranks first, so the
    choice is the same with any number of processes.

    Args:
        k: Images shown.
        class_names: One name per class; default the dataset's `classes`, else indices.
        ignore_index: Mask value counted nowhere (None: none).
        every_n_validations: Validations between grids.
        tile_size: Each tile is enlarged (nearest) to at least this many pixels wide.
        mean: Normalisation mean of the inputs, undone to show them; None stretches each image.
        std: Normalisation std of the inputs.
        prefix: The validation it looks at ("val", or "val_ema" for an `EMA`'s).
    """

    def __init__(
        self,
        k: int = 8,
        class_names: Sequence[str] | None = None,
        ignore_index: int | None = IGNORE_INDEX,
        every_n_validations: int = 1,
        tile_size: int = 128,
        mean: Sequence[float] | None = IMAGENET_MEAN,
        std: Sequence[float] | None = IMAGENET_STD,
        prefix: str = "val",
    ) -> None:
        if k < 1:
            raise TrainerError(f"WorstSegmentations: k must be at least 1, got {k}")
        super().__init__(class_names, ignore_index, every_n_validations, prefix)
        self.k, self.tile_size, self.mean, self.std = k, tile_size, mean, std
        self.scores: torch.Tensor | None = None  # the running bottom-k, on the device, set together
        self.positions: torch.Tensor | None = None
        self.images: torch.Tensor | None = None
        self.truth: torch.Tensor | None = None
        self.predicted: torch.Tensor | None = None
        self.seen = 0

    def reset(self) -> None:
        self.scores = self.positions = self.images = self.truth = self.predicted = None
        self.seen = 0

    def add(self, trainer: Trainer, logits: torch.Tensor, masks: torch.Tensor) -> None:
        inputs = trainer.last_inputs
        if not is_image_batch(inputs):  # decided from shapes alone: every process decides alike
            self.disabled = True
            if trainer.is_main_process:
                warn_once(self, "images", "WorstSegmentations: the inputs are not (N, C, H, W) images; disabled")
            return
        if trainer.accelerator.num_processes > 1:
            inputs = trainer.accelerator.gather_for_metrics(inputs)  # every process takes part
        if not trainer.is_main_process:
            return
        predicted, classes = class_predictions(logits.detach())
        intersection, union = image_overlaps(predicted, masks, classes, self.ignore_index)
        scores = image_iou(intersection, union)
        scores = torch.where(torch.isnan(scores), torch.full_like(scores, math.inf), scores)  # nothing to score
        n = scores.shape[0]
        positions = torch.arange(self.seen, self.seen + n, device=scores.device)
        self.seen += n
        images, truth = inputs.detach(), masks
        if self.scores is not None:
            assert self.positions is not None and self.images is not None
            assert self.truth is not None and self.predicted is not None
            scores, positions = torch.cat([self.scores, scores]), torch.cat([self.positions, positions])
            images, truth = torch.cat([self.images, images]), torch.cat([self.truth, truth])
            predicted = torch.cat([self.predicted, predicted])
        by_position = positions.argsort(stable=True)  # of equal scores, the earlier image ranks first
        keep = by_position[scores[by_position].argsort(stable=True)][: self.k]
        self.scores, self.positions, self.images = scores[keep], positions[keep], images[keep]
        self.truth, self.predicted = truth[keep], predicted[keep]

    def write(self, trainer: Trainer) -> None:
        if self.scores is None or trainer.tb_writer is None:
            return
        assert self.positions is not None and self.images is not None
        assert self.truth is not None and self.predicted is not None
        finite = torch.isfinite(self.scores).cpu()
        if not bool(finite.any()):
            return
        scores, positions = self.scores.cpu()[finite], self.positions.cpu()[finite]
        keep = finite.to(self.images.device)
        truth, predicted = self.truth[keep], self.predicted[keep]
        shown = display_images(self.images[keep], self.mean, self.std)
        tiles = overlay_rows(shown, truth, predicted, self.ignore_index).cpu()
        missed = [self.missed(truth[i].cpu(), predicted[i].cpu()) for i in range(truth.shape[0])]
        captions = [
            f"#{int(p)}  IoU {float(s):.2f}" + (f"  missed: {', '.join(m)}" if m else "")
            for p, s, m in zip(positions, scores, missed, strict=True)
        ]
        step = trainer.state.global_step
        grid = overlay_grid(tiles, captions, self.names, self.ignore_index, self.tile_size)
        trainer.tb_writer.add_image(f"segmentation/worst/{self.prefix}", grid, step)
        rows = ["| rank | sample | IoU | classes in the truth | missed classes |", "| ---: | ---: | ---: | --- | --- |"]
        for rank, (p, s, m) in enumerate(zip(positions, scores, missed, strict=True), start=1):
            present = ", ".join(self.names[c] for c in self.classes_in(truth[rank - 1].cpu()))
            rows.append(f"| {rank} | {int(p)} | {float(s):.3f} | {present} | {', '.join(m) or '–'} |")
        trainer.tb_writer.add_text(f"segmentation/worst/{self.prefix}", "\n".join(rows), step)

    def classes_in(self, mask: torch.Tensor) -> list[int]:
        """The class indices a mask holds (ignored pixels aside)."""
        values = mask.unique().tolist()
        return [int(v) for v in values if 0 <= v < len(self.names) and v != self.ignore_index]

    def missed(self, truth: torch.Tensor, predicted: torch.Tensor) -> list[str]:
        """Names of the classes in the truth that the prediction does not show at all."""
        shown = set(predicted.unique().tolist())
        return [self.names[c] for c in self.classes_in(truth) if c not in shown]
