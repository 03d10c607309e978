"""SegmentationView: what the per-validation segmentation views share (checks, class names, gathered batches).

`PixelConfusionMatrix`, `SegmentationReport` and `WorstSegmentations` count each gathered
validation batch on the device and write once at the end of the validation they look at.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from callbacks_kit.cadence import warn_once
from callbacks_kit.callbacks.base import Callback, Order
from callbacks_kit.errors import TrainerError
from callbacks_kit.inspection.segmentation import check_segmentation_at_fit_start, gathered_segmentation
from callbacks_kit.segmentation_metrics import IGNORE_INDEX, PixelCounts

if TYPE_CHECKING:
    from callbacks_kit.trainer import Trainer


class SegmentationView(Callback):
    """Base of the per-validation segmentation views: override `reset`, `add` and `write`.

    Args:
        class_names: One name per class; default the validation dataset's `classes` when they
            fit the model's outputs, else indices.
        ignore_index: Mask value counted nowhere (None: none).
        every_n_validations: Validations between writes.
        prefix: The validation it looks at (`trainer.state.validation_prefix`): "val" for the
            trained weights, "val_ema" for an `EMA`'s.
    """

    order = Order.INSPECT

    def __init__(
        self,
        class_names: Sequence[str] | None = None,
        ignore_index: int | None = IGNORE_INDEX,
        every_n_validations: int = 1,
        prefix: str = "val",
    ) -> None:
        if every_n_validations < 1:
            raise TrainerError(
                f"{type(self).__name__}: every_n_validations must be at least 1, got {every_n_validations}"
            )
        self.class_names = list(class_names) if class_names is not None else None
        self.ignore_index = ignore_index
        self.every_n_validations = every_n_validations
        self.prefix = prefix
        self.validations = 0
        self.disabled = False
        self.reset()

    def on_fit_start(self, trainer: Trainer) -> None:
        if trainer.val_loader is None:
            self.disabled = True
            if trainer.is_main_process:
                warn_once(self, "no-val", f"{type(self).__name__}: fit has no val_loader, so there is nothing to show")
            return
        self.class_names = check_segmentation_at_fit_start(trainer, self, self.class_names)

    def on_validation_start(self, trainer: Trainer) -> None:
        if trainer.state.validation_prefix == self.prefix:
            self.reset()

    def on_validation_batch_end(self, trainer: Trainer) -> None:
        if self.disabled or trainer.state.validation_prefix != self.prefix:
            return
        batch = gathered_segmentation(trainer, self)
        if batch is None:
            self.disabled = True
            return
        self.add(trainer, *batch)

    def on_validation_end(self, trainer: Trainer) -> None:
        if self.disabled or trainer.state.validation_prefix != self.prefix:
            return
        self.validations += 1
        if trainer.tb_writer is not None and self.validations % self.every_n_validations == 0:
            self.write(trainer)

    @property
    def names(self) -> list[str]:
        """The class names (known from `on_fit_start` on)."""
        return list(self.class_names or [])

    def reset(self) -> None:
        """Forget the last validation's counts."""

    def add(self, trainer: Trainer, logits: torch.Tensor, masks: torch.Tensor) -> None:
        """Take one gathered batch (called on every process; keep work to the main one)."""

    def write(self, trainer: Trainer) -> None:
        """Write to `trainer.tb_writer` (main process, at the validations due)."""


class PixelCountView(SegmentationView):
    """A view of the validation's pixel confusion counts (gathered from every process, counted on the main one)."""

    counts: PixelCounts  # the latest validation's, made by `reset`

    def reset(self) -> None:
        self.counts = PixelCounts(ignore_index=self.ignore_index)

    def add(self, trainer: Trainer, logits: torch.Tensor, masks: torch.Tensor) -> None:
        if trainer.is_main_process:
            self.counts.add_logits(logits, masks)
