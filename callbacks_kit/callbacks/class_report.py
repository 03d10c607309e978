"""Per-class precision, recall, F1 and support, and one precision-recall curve per class, at each validation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from callbacks_kit.cadence import warn_once
from callbacks_kit.callbacks.base import Callback, Order
from callbacks_kit.errors import TrainerError
from callbacks_kit.inspection.classification import (
    ClassStats,
    ConfusionCounts,
    check_outputs_at_fit_start,
    class_name,
    class_stats,
    gathered_batch,
)
from callbacks_kit.inspection.probe import class_names_of

if TYPE_CHECKING:
    from callbacks_kit.trainer import Trainer

# TensorBoard's PR-curve plugin stores at most this many thresholds (add_pr_curve caps it too).
MAX_THRESHOLDS = 127


class ClassReport(Callback):
    """Per-class report and precision-recall curves of a classifier (`class_report/val`, `pr_curve/val/<class>`).

    At each validation the gathered logits of every batch (each sample once across
    processes) go into two bounded device counts: the confusion matrix, and per class a
    histogram of the softmax probabilities of its positive and negative samples over
    `num_thresholds` buckets. Nothing is read until the end; then the main process writes:

    - a markdown table in the text dashboard: precision, recall, F1 and support per class,
      their macro and weighted averages, and the accuracy (`class_report/<prefix>`);
    - scalars `<prefix>_class/<class>/{precision,recall,f1,support}` and
      `<prefix>_class/{macro,weighted}/{precision,recall,f1}`;
    - one PR curve per class (`pr_curve/<prefix>/<class>`, one-vs-rest), computed from the
      histograms exactly as TensorBoard's `add_pr_curve` computes it from the probabilities.

    Args:
        class_names: One name per output; default: the dataset's `classes`, else indices.
        pr_curves: Also write the PR curves.
        num_thresholds: Thresholds of each PR curve (2 to 127).
        every_n_validations: Validations between reports.
        prefix: The validation it reports on (`trainer.state.validation_prefix`): "val" is
            the trained weights', "val_ema" the EMA copy's.
    """

    order = Order.INSPECT

    def __init__(
        self,
        class_names: Sequence[str] | None = None,
        pr_curves: bool = True,
        num_thresholds: int = MAX_THRESHOLDS,
        every_n_validations: int = 1,
        prefix: str = "val",
    ) -> None:
        if every_n_validations < 1:
            raise TrainerError(f"ClassReport: every_n_validations must be at least 1, got {every_n_validations}")
        if not 2 <= num_thresholds <= MAX_THRESHOLDS:
            raise TrainerError(
                f"ClassReport: num_thresholds must be between 2 and {MAX_THRESHOLDS} "
                f"(TensorBoard's PR curves hold at most {MAX_THRESHOLDS}), got {num_thresholds}"
            )
        self.class_names = list(class_names) if class_names is not None else None
        self.pr_curves = pr_curves
        self.num_thresholds = num_thresholds
        self.every_n_validations = every_n_validations
        self.prefix = prefix
        self.confusion = ConfusionCounts()
        self.stats: ClassStats | None = None
        # Per class, counts of positive and of all samples in each probability bucket, + a spare slot.
        self._positives: torch.Tensor | None = None
        self._all: torch.Tensor | None = None
        self._validations = 0
        self._disabled = False

    def on_fit_start(self, trainer: Trainer) -> None:
        if trainer.val_loader is None:
            self._disabled = True
            if trainer.is_main_process:
                warn_once(self, "no-val", "ClassReport: fit has no val_loader, so there is nothing to report")
            return
        check_outputs_at_fit_start(trainer, self, self.class_names)
        self.class_names = self.class_names or class_names_of(trainer)

    def on_validation_start(self, trainer: Trainer) -> None:
        if trainer.state.validation_prefix == self.prefix:
            self.confusion.reset()
            self._positives = self._all = None

    def on_validation_batch_end(self, trainer: Trainer) -> None:
        if self._disabled or trainer.state.validation_prefix != self.prefix:
            return
        batch = gathered_batch(trainer, self)
        if batch is None:
            self._disabled = True
            return
        if not trainer.is_main_process:
            return
        logits, targets = batch
        self.confusion.add(logits, targets)
        if self.pr_curves:
            self._add_probabilities(logits, targets)

    def _add_probabilities(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Bucket each class's probability, as TensorBoard does: `floor(p * (num_thresholds - 1))`."""
        n, classes = logits.shape
        buckets = self.num_thresholds
        if self._positives is None or self._all is None:
            self._positives = torch.zeros(classes * buckets + 1, dtype=torch.long, device=logits.device)
            self._all = torch.zeros_like(self._positives)
        probs = logits.float().softmax(dim=1)
        bucket = (probs * (buckets - 1)).floor().long().clamp_(0, buckets - 1)
        truth = targets.long()
        valid = ((truth >= 0) & (truth < classes)).unsqueeze(1)
        index = torch.arange(classes, device=logits.device) * buckets + bucket
        index = torch.where(valid, index, classes * buckets).flatten()  # ignored targets: the spare slot
        positive = (truth.unsqueeze(1) == torch.arange(classes, device=logits.device)).long().flatten()
        self._positives.index_add_(0, index, positive)
        self._all.index_add_(0, index, torch.ones_like(index))

    def on_validation_end(self, trainer: Trainer) -> None:
        if self._disabled or trainer.state.validation_prefix != self.prefix:
            return
        self._validations += 1
        matrix = self.confusion.matrix()  # None on processes other than the main one
        if matrix is None:
            return
        self.stats = class_stats(matrix)
        if trainer.tb_writer is None or self._validations % self.every_n_validations:
            return
        writer, step = trainer.tb_writer, trainer.state.global_step
        names = [self._name(i) for i in range(matrix.shape[0])]
        for i, name in enumerate(names):
            for kind in ("precision", "recall", "f1", "support"):
                writer.add_scalar(f"{self.prefix}_class/{name}/{kind}", getattr(self.stats, kind)[i], step)
        for average in ("macro", "weighted"):
            for kind, value in self.stats.average(average).items():
                writer.add_scalar(f"{self.prefix}_class/{average}/{kind}", value, step)
        writer.add_text(f"class_report/{self.prefix}", self.table(matrix, names), step)
        if self.pr_curves and self._positives is not None and self._all is not None:
            for i, name in enumerate(names):
                curve = self.curve(i)
                writer.add_pr_curve_raw(
                    f"pr_curve/{self.prefix}/{name}", *curve, global_step=step, num_thresholds=self.num_thresholds
                )

    def curve(
        self, index: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """`(tp, fp, tn, fn, precision, recall)` of class `index` at each threshold, one-vs-rest.

        The same arithmetic as TensorBoard's `add_pr_curve`: counts at or above each
        threshold are reverse cumulative sums of the bucket counts.
        """
        assert self._positives is not None and self._all is not None
        buckets = self.num_thresholds
        positives = self._positives[index * buckets : (index + 1) * buckets].cpu().double()
        negatives = self._all[index * buckets : (index + 1) * buckets].cpu().double() - positives
        tp = positives.flip(0).cumsum(0).flip(0)
        fp = negatives.flip(0).cumsum(0).flip(0)
        tn, fn = fp[0] - fp, tp[0] - tp
        precision = tp / (tp + fp).clamp_min(1e-7)
        recall = tp / (tp + fn).clamp_min(1e-7)
        return tp, fp, tn, fn, precision, recall

    def table(self, matrix: torch.Tensor, names: Sequence[str]) -> str:
        """The report as a markdown table (TensorBoard's text dashboard renders it)."""
        assert self.stats is not None
        stats = self.stats
        rows = ["| class | precision | recall | F1 | support |", "| --- | ---: | ---: | ---: | ---: |"]
        for i, name in enumerate(names):
            rows.append(
                f"| {_cell(name)} | {stats.precision[i]:.3f} | {stats.recall[i]:.3f} | {stats.f1[i]:.3f} "
                f"| {stats.support[i]} |"
            )
        total = sum(stats.support)
        for average in ("macro", "weighted"):
            a = stats.average(average)
            rows.append(f"| *{average} average* | {a['precision']:.3f} | {a['recall']:.3f} | {a['f1']:.3f} | {total} |")
        accuracy = float(matrix.diag().sum()) / total if total else math.nan
        rows.append(f"| *accuracy* | | | {accuracy:.3f} | {total} |")
        return "\n".join(rows)

    def _name(self, index: int) -> str:
        return class_name(self.class_names, index)


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return text.replace("|", "\\|")
