"""Measuring a trained run on a held-out ImageFolder: loss, accuracy, per-class report, confusion matrix."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter

from callbacks_kit.data.folders import CheckedImageFolder, drop_unreadable
from callbacks_kit.deploy.run_info import RunInfo, load_run_model, run_json_path
from callbacks_kit.distributed import best_device
from callbacks_kit.errors import DataError
from callbacks_kit.inspection.classification import ConfusionCounts, class_stats
from callbacks_kit.inspection.confusion_image import confusion_image


@dataclass
class EvaluationReport:
    """A run measured on a test set. `confusion` rows are true classes, columns predictions (the run's order)."""

    classes: list[str]
    samples: int
    loss: float
    accuracy: float
    confusion: torch.Tensor
    precision: list[float]
    recall: list[float]
    f1: list[float]
    support: list[int]
    missing_classes: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

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
                f"{self.support[i]:7d}"
            )
        lines.append(
            f"{'macro avg':<{width}}  {_mean(self.precision):9.4f}  {_mean(self.recall):6.4f}  "
            f"{_mean(self.f1):.4f}  {self.samples:7d}"
        )
        lines.append(f"test/loss {self.loss:.4f}, test/accuracy {self.accuracy:.4f} on {self.samples} images")
        return "\n".join(lines)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


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

    Scalars `test/loss`, `test/accuracy` and `test/<precision|recall|f1>/<class>`, the image
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
    loss_sum = 0.0
    for images, targets in DataLoader(dataset, batch_size=batch_size, num_workers=workers):
        logits = model(images.to(device)).float().cpu()
        loss_sum += float(F.cross_entropy(logits, targets, reduction="sum"))
        counts.add(logits, targets)
    confusion = counts.matrix()
    assert confusion is not None  # labelled_folder refuses a folder without images
    samples = int(confusion.sum())
    stats = class_stats(confusion)
    report = EvaluationReport(
        classes=list(info.classes),
        samples=samples,
        loss=loss_sum / samples,
        accuracy=float(confusion.diag().sum()) / samples,
        confusion=confusion,
        precision=stats.precision,
        recall=stats.recall,
        f1=stats.f1,
        support=stats.support,
        missing_classes=missing,
    )
    if tensorboard:
        write_tensorboard(run_json_path(run).parent, report)
    return report


def write_tensorboard(run_dir: str | os.PathLike[str], report: EvaluationReport) -> None:
    """Write `report` into the run's TensorBoard under `test/` (a new event file; nothing existing changes)."""
    with SummaryWriter(str(run_dir)) as writer:
        writer.add_scalar("test/loss", report.loss, 0)
        writer.add_scalar("test/accuracy", report.accuracy, 0)
        for metric in ("precision", "recall", "f1"):
            for name, value in zip(report.classes, getattr(report, metric), strict=True):
                writer.add_scalar(f"test/{metric}/{name}", value, 0)
        writer.add_image("confusion_matrix/test", confusion_image(report.confusion, report.classes, "test set"), 0)
        writer.add_text("test/report", "    " + report.table().replace("\n", "\n    "), 0)
