"""Measuring a trained run on a held-out ImageFolder: loss, accuracy, per-class report, confusion matrix."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader

from callbacks_kit.data.folders import CheckedImageFolder, drop_unreadable
from callbacks_kit.deploy.run_info import RunInfo, load_run_model, run_json_path
from callbacks_kit.distributed import best_device
from callbacks_kit.errors import DataError
from callbacks_kit.inspection.classification import ConfusionCounts, class_stats
from callbacks_kit.inspection.confusion_image import confusion_image
from callbacks_kit.inspection.event_report import last_step
from callbacks_kit.inspection.run_writer import RunWriter


@dataclass
class EvaluationReport:
    """A run measured on a test set. `confusion` rows are true classes, columns predictions (the run's order).

    `loss` is the run's own criterion, the cross-entropy with the run's label smoothing, so
    it compares with the run's `val/loss`; `nll` is the plain cross-entropy (negative
    log-likelihood) beside it. The macro averages cover the classes with test images
    (`present`), as scikit-learn's `labels=` does: a class without samples has no recall.
    """

    classes: list[str]
    samples: int
    loss: float
    nll: float
    accuracy: float
    confusion: torch.Tensor
    precision: list[float]
    recall: list[float]
    f1: list[float]
    support: list[int]
    missing_classes: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    label_smoothing: float = 0.0

    @property
    def present(self) -> list[int]:
        """Indices of the classes with at least one test image: those the macro averages cover."""
        return [i for i, count in enumerate(self.support) if count > 0]

    def macro(self, metric: str) -> float:
        """The mean of "precision", "recall" or "f1" over the classes with test images (`present`)."""
        values = getattr(self, metric)
        return sum(values[i] for i in self.present) / len(self.present) if self.present else float("nan")

    def to_json(self) -> dict[str, Any]:
        """`{"loss", "accuracy", "per_class": {name: {"precision", "recall", "f1", "support"}}}`."""
        per_class = {
            name: {"precision": p, "recall": r, "f1": f, "support": n}
            for name, p, r, f, n in zip(self.classes, self.precision, self.recall, self.f1, self.support, strict=True)
        }
        return {"loss": self.loss, "accuracy": self.accuracy, "per_class": per_class}

    def table(self) -> str:
        """The per-class report as aligned text, with the overall loss and accuracy."""
        width = max(12, *(len(name) for name in self.classes))
        lines = [f"{'class':<{width}}  precision  recall     f1  support"]
        for i, name in enumerate(self.classes):
            lines.append(
                f"{name:<{width}}  {self.precision[i]:9.4f}  {self.recall[i]:6.4f}  {self.f1[i]:.4f}  "
                f"{self.support[i]:7d}" + ("  (no test images)" if not self.support[i] else "")
            )
        lines.append(
            f"{'macro avg':<{width}}  {self.macro('precision'):9.4f}  {self.macro('recall'):6.4f}  "
            f"{self.macro('f1'):.4f}  {self.samples:7d}"
        )
        if len(self.present) < len(self.classes):
            lines.append(
                f"(the macro average covers the {len(self.present)} of {len(self.classes)} classes with test images; "
                "classes without any are left out, as scikit-learn's labels= does)"
            )
        criterion = (
            f"cross-entropy with label smoothing {self.label_smoothing:g}, as the run's val/loss"
            if self.label_smoothing
            else "cross-entropy, as the run's val/loss"
        )
        lines.append(
            f"test/loss {self.loss:.4f} ({criterion}), test/nll {self.nll:.4f} (plain cross-entropy), "
            f"test/accuracy {self.accuracy:.4f} on {self.samples} images"
        )
        return "\n".join(lines)


def labelled_folder(root: str | os.PathLike[str], info: RunInfo) -> tuple[CheckedImageFolder, list[str]]:
    """The ImageFolder at `root` with its targets renumbered to the run's classes (matched by name).

    Returns the dataset and the run's classes that have no folder (reported, not an error).

    Raises:
        DataError: no such folder, or class folders the run does not know.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"--data {root}: no such folder; give an ImageFolder test set (one folder per class)")
    try:
        dataset = CheckedImageFolder(str(root), transform=info.transform())
    except FileNotFoundError as exc:
        raise DataError(
            f"{root} is not an ImageFolder test set ({exc}); expected one subfolder of images per class"
        ) from exc
    extra = [name for name in dataset.classes if name not in info.classes]
    if extra:
        raise DataError(
            f"{root} has class folders the run was not trained on: {', '.join(extra)} (the run knows "
            f"{', '.join(info.classes)}); remove or rename those folders, or evaluate a run trained on them"
        )
    drop_unreadable(dataset)
    index = {name: info.classes.index(name) for name in dataset.classes}
    dataset.samples = [(path, index[dataset.classes[target]]) for path, target in dataset.samples]
    dataset.imgs, dataset.targets = dataset.samples, [t for _, t in dataset.samples]
    missing = [name for name in info.classes if name not in dataset.classes]
    return dataset, missing


@torch.inference_mode()
def evaluate_run(
    run: str | os.PathLike[str],
    data: str | os.PathLike[str],
    checkpoint: str = "best",
    batch_size: int = 32,
    workers: int = 0,
    device: torch.device | str | None = None,
    tensorboard: bool = True,
) -> EvaluationReport:
    """Measure a run on the ImageFolder at `data` and (by default) write the results into its TensorBoard.

    Scalars `test/loss` (the run's criterion, with its label smoothing), `test/nll` (plain
    cross-entropy), `test/accuracy` and `test/<precision|recall|f1>/<class>` for the classes
    with test images, the image
    `confusion_matrix/test` and the text `test/report` go into the run folder, at the step
    0 (the test set is measured once, after training).

    Args:
        run: The run folder.
        data: Test images, one folder per class, matched to the run's classes by name.
        checkpoint: "best", "last", or a weights file or checkpoint folder.
        batch_size: Images per forward pass.
        workers: DataLoader workers.
        device: Where to run; default the best accelerator present, else the CPU.
        tensorboard: Write the results into the run's TensorBoard.
    """
    model, info = load_run_model(run, checkpoint)
    dataset, missing = labelled_folder(data, info)
    device = torch.device(device) if device else best_device()
    model.to(device)
    counts = ConfusionCounts()
    loss_sum = nll_sum = 0.0
    for images, targets in DataLoader(dataset, batch_size=batch_size, num_workers=workers):
        logits = model(images.to(device)).float().cpu()
        loss_sum += float(F.cross_entropy(logits, targets, reduction="sum", label_smoothing=info.label_smoothing))
        nll_sum += float(F.cross_entropy(logits, targets, reduction="sum"))
        counts.add(logits, targets)
    confusion = counts.matrix()
    assert confusion is not None  # labelled_folder refuses a folder without images
    samples = int(confusion.sum())
    stats = class_stats(confusion)
    report = EvaluationReport(
        classes=list(info.classes),
        samples=samples,
        loss=loss_sum / samples,
        nll=nll_sum / samples,
        accuracy=float(confusion.diag().sum()) / samples,
        confusion=confusion,
        precision=stats.precision,
        recall=stats.recall,
        f1=stats.f1,
        support=stats.support,
        missing_classes=missing,
        label_smoothing=info.label_smoothing,
    )
    if tensorboard:
        write_tensorboard(run_json_path(run).parent, report)
    return report


def write_tensorboard(run_dir: str | os.PathLike[str], report: EvaluationReport, step: int | None = None) -> None:
    """Write `report` into the run's TensorBoard at `step` (default: the run's last step); nothing existing changes.

    `test/loss`, `test/nll` and `test/accuracy` go into the `test/` sub-run as `loss`, `nll`
    and `accuracy`, in the same charts as the training and validation curves, a point at the
    end of the run; the per-class scalars (of the classes with test images), the report and
    the confusion matrix into new event files of the run itself.
    """
    step = last_step(Path(run_dir)) if step is None else step
    with RunWriter(str(run_dir)) as writer:
        writer.add_split_scalar("test", "loss", report.loss, step)
        writer.add_split_scalar("test", "nll", report.nll, step)
        writer.add_split_scalar("test", "accuracy", report.accuracy, step)
        for metric in ("precision", "recall", "f1"):
            for i in report.present:  # a class without test images has nothing to show
                writer.add_scalar(f"test/{metric}/{report.classes[i]}", getattr(report, metric)[i], step)
        writer.add_image("confusion_matrix/test", confusion_image(report.confusion, report.classes, "test set"), step)
        writer.add_text("test/report", "    " + report.table().replace("\n", "\n    "), step)
