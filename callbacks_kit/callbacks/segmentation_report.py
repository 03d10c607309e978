"""SegmentationReport: per-class IoU and Dice as a table in TensorBoard's text dashboard at each validation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from callbacks_kit.callbacks.segmentation_view import PixelCountView
from callbacks_kit.segmentation_metrics import SegmentationScores, segmentation_scores

if TYPE_CHECKING:
    from callbacks_kit.trainer import Trainer


class SegmentationReport(PixelCountView):
    """Per-class IoU, Dice and pixel counts of each validation, as a markdown table (`segmentation_report/<prefix>`).

    Counted on the device from the gathered validation batches (each sample once across
    processes, ignored pixels nowhere) and read once at the end. A class absent from both the
    truth and the predictions is marked *absent* with no score and left out of the means; a
    class in the truth that is never predicted, or predicted but never in the truth, is
    marked too. Below the table: mean IoU and mean Dice over the scored classes, pixel
    accuracy, and the ignored pixels.

    Args:
        class_names: One name per class; default the dataset's `classes`, else indices.
        ignore_index: Mask value counted nowhere (None: none).
        every_n_validations: Validations between reports.
        prefix: The validation it looks at ("val", or "val_ema" for an `EMA`'s).

    Attributes:
        scores: `SegmentationScores` of the latest validation written.
    """

    scores: SegmentationScores | None = None

    def write(self, trainer: Trainer) -> None:
        if self.counts.counts is None or trainer.tb_writer is None:
            return
        matrix, ignored, _ = self.counts.read()
        self.scores = segmentation_scores(matrix, ignored)
        trainer.tb_writer.add_text(f"segmentation_report/{self.prefix}", report_table(self.scores, self.names),
                                   trainer.state.global_step)  # fmt: skip


def report_table(scores: SegmentationScores, class_names: Sequence[str]) -> str:
    """The per-class table and the summary below it, as markdown (TensorBoard's text dashboard renders it)."""
    rows = ["| class | IoU | Dice | true pixels | predicted pixels | |", "| --- | ---: | ---: | ---: | ---: | --- |"]
    for i, name in enumerate(class_names):
        truth, predicted = scores.support[i], scores.predicted[i]
        note = ""
        if truth == 0 and predicted == 0:
            note = "*absent*: not in the truth nor predicted; no score, left out of the means"
        elif predicted == 0:
            note = "never predicted"
        elif truth == 0:
            note = "predicted, but not in the truth"
        rows.append(
            f"| {_cell(name)} | {_score(scores.iou[i])} | {_score(scores.dice[i])} | {truth} | {predicted} | {note} |"
        )
    scored = sum(scores.present)
    summary = (
        f"**mean IoU {_score(scores.mean_iou)}**, mean Dice {_score(scores.mean_dice)} over {scored} of "
        f"{len(class_names)} classes; pixel accuracy {_score(scores.pixel_accuracy)} on {sum(scores.support)} pixels"
    )
    if scores.ignored:
        summary += f"; {scores.ignored} ignored pixels (counted nowhere)"
    return "\n".join(rows) + "\n\n" + summary


def _score(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.3f}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")
