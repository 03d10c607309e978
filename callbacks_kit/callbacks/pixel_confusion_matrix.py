"""PixelConfusionMatrix: the confusion matrix of a segmentation model's pixels at each validation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from callbacks_kit.callbacks.segmentation_view import PixelCountView
from callbacks_kit.inspection.confusion_image import confusion_image
from callbacks_kit.segmentation_metrics import IGNORE_INDEX

if TYPE_CHECKING:
    from callbacks_kit.trainer import Trainer


class PixelConfusionMatrix(PixelCountView):
    """Pixel confusion matrix of each validation (`segmentation/confusion_matrix/<prefix>`).

    Every pixel of the gathered validation batches (each sample once across processes) is
    counted on the device, ignored pixels nowhere; the main process reads the count once at
    the end. Rows are true classes, columns predictions; each cell shows, and is coloured by,
    its share of the row's pixels (the class's recall on the diagonal).

    Args:
        class_names: One name per class; default the dataset's `classes`, else indices.
        ignore_index: Mask value counted nowhere (None: none).
        every_n_validations: Validations between images.
        max_text_classes: Above this many classes, cells show colour only.
        prefix: The validation it looks at ("val", or "val_ema" for an `EMA`'s).

    Attributes:
        matrix: The `(classes, classes)` pixel counts of the latest validation written, on the host.
    """

    def __init__(
        self,
        class_names: Sequence[str] | None = None,
        ignore_index: int | None = IGNORE_INDEX,
        every_n_validations: int = 1,
        max_text_classes: int = 30,
        prefix: str = "val",
    ) -> None:
        super().__init__(class_names, ignore_index, every_n_validations, prefix)
        self.max_text_classes = max_text_classes
        self.matrix: torch.Tensor | None = None

    def write(self, trainer: Trainer) -> None:
        if self.counts.counts is None or trainer.tb_writer is None:
            return
        self.matrix, ignored, _ = self.counts.read()
        step = trainer.state.global_step
        subtitle = f"step {step}" + (f", {ignored} ignored pixels" if ignored else "")
        image = confusion_image(self.matrix, self.names, subtitle, self.max_text_classes, unit="pixels", cells="shares")
        trainer.tb_writer.add_image(f"segmentation/confusion_matrix/{self.prefix}", image, step)
