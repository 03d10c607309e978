"""A confusion-matrix image at each validation, counted on the device."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from callbacks_kit.cadence import warn_once
from callbacks_kit.callbacks.base import Callback, Order
from callbacks_kit.errors import TrainerError
from callbacks_kit.inspection.confusion_image import confusion_image
from callbacks_kit.inspection.image_summary import add_image
from callbacks_kit.inspection.probe import class_names_of, logits_of
from callbacks_kit.metrics import hard_labels

if TYPE_CHECKING:
    from callbacks_kit.trainer import Trainer


class ConfusionMatrix(Callback):
    """Confusion matrix of a classifier at each validation (`confusion_matrix/val`).

    Counts are kept on the device from the gathered outputs and targets of every
    validation batch (each sample counted once across processes) and read once at the
    end. Rows are true classes, columns predictions; cells are coloured by the row-
    normalised value (recall) and show the counts.

    Args:
        class_names: Axis labels; default: the dataset's `classes`, else indices.
        every_n_validations: Validations between images.
        max_text_classes: Above this many classes, cells show colour only.
    """

    order = Order.INSPECT

    def __init__(
        self, class_names: Sequence[str] | None = None, every_n_validations: int = 1, max_text_classes: int = 30
    ) -> None:
        if every_n_validations < 1:
            raise TrainerError(f"every_n_validations must be at least 1, got {every_n_validations}")
        self.class_names = list(class_names) if class_names is not None else None
        self.every_n_validations = every_n_validations
        self.max_text_classes = max_text_classes
        self.counts: torch.Tensor | None = None
        self._validations = 0
        self._disabled = False

    def on_fit_start(self, trainer: Trainer) -> None:
        self.class_names = self.class_names or class_names_of(trainer)

    def on_validation_start(self, trainer: Trainer) -> None:
        if trainer.state.validation_prefix == "val":
            self.counts = None

    def on_validation_batch_end(self, trainer: Trainer) -> None:
        if trainer.state.validation_prefix != "val":
            return  # the EMA's validation (val_ema) or an evaluate(prefix=...): not this view's
        outputs, targets = logits_of(trainer.last_outputs), trainer.last_targets
        if self._disabled or outputs is None or not isinstance(targets, torch.Tensor):
            return
        targets = hard_labels(outputs, targets)  # class probabilities count for their most likely class
        # Decided from shapes alone, so that every process decides alike before a gather.
        if targets.ndim != 1 or outputs.ndim > 2 or outputs.shape[0] != targets.shape[0]:
            self._disabled = True
            if trainer.is_main_process:
                warn_once(
                    self,
                    "shape",
                    f"ConfusionMatrix: needs (N, classes) outputs and (N,) targets, got "
                    f"{tuple(outputs.shape)} and {tuple(targets.shape)}; disabled",
                )
            return
        if trainer.loss_fn is None and trainer.accelerator.num_processes > 1:
            # The trainer gathers outputs only for its own loss_fn; every process takes part here.
            outputs, targets = trainer.accelerator.gather_for_metrics((outputs, targets))
        if not trainer.is_main_process:
            return
        if outputs.ndim == 1 or outputs.shape[1] == 1:  # one logit: binary, threshold at 0
            classes, predicted = 2, (outputs.reshape(-1) > 0).long()
        else:
            classes, predicted = outputs.shape[1], outputs.argmax(dim=1)
        if self.counts is None:
            self.counts = torch.zeros(classes * classes + 1, dtype=torch.long, device=outputs.device)
        truth = targets.long()
        valid = (truth >= 0) & (truth < classes)
        # Out-of-range targets go to a spare last slot: no boolean mask, so no device sync.
        index = torch.where(valid, truth * classes + predicted, classes * classes)
        self.counts.index_add_(0, index, torch.ones_like(index))

    def on_validation_end(self, trainer: Trainer) -> None:
        if trainer.state.validation_prefix != "val":
            return
        self._validations += 1
        if trainer.tb_writer is None or self.counts is None or self._validations % self.every_n_validations:
            return
        classes = int(round((self.counts.numel() - 1) ** 0.5))
        matrix = self.counts[:-1].view(classes, classes).cpu()
        image = self.render(matrix, f"step {trainer.state.global_step}")
        add_image(trainer.tb_writer, "confusion_matrix/val", image, trainer.state.global_step)

    def render(self, matrix: torch.Tensor, subtitle: str = "") -> torch.Tensor:
        """A `(3, H, W)` image of a `(classes, classes)` count matrix (rows: true classes)."""
        return confusion_image(matrix, self.class_names, subtitle, self.max_text_classes)
