"""Measuring a trained segmentation run on held-out masks: loss, mean IoU, pixel accuracy, per-class IoU and Dice.

Each image gets the run's preprocessing and its logits are resized back to the image's
size, so the scores are those of the masks `predict` would write, at the masks' own
resolution. The loss is the run's (`run.json`'s `loss`), averaged over images.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader

from callbacks_kit.callbacks.segmentation_report import report_table
from callbacks_kit.data.segmentation import CLASSES_FILE, SegmentationFolder, read_class_names
from callbacks_kit.deploy.run_info import RunInfo, load_run_model, run_json_path
from callbacks_kit.distributed import best_device
from callbacks_kit.errors import DataError, DeployError
from callbacks_kit.inspection.confusion_image import confusion_image
from callbacks_kit.inspection.event_report import last_step
from callbacks_kit.inspection.run_writer import RunWriter
from callbacks_kit.losses import SegmentationLoss
from callbacks_kit.segmentation_metrics import (
    PixelCounts,
    SegmentationScores,
    segmentation_logits,
    segmentation_scores,
    tag_name,
)


@dataclass
class SegmentationEvaluation:
    """A segmentation run measured on a test split. `confusion` rows are true classes, columns predictions."""

    classes: list[str]
    images: int
    loss: float
    scores: SegmentationScores
    confusion: torch.Tensor

    def to_json(self) -> dict[str, Any]:
        """`{"loss", "mean_iou", "pixel_accuracy", "per_class": {name: {"iou", "dice"}}}`; absent classes null."""
        per_class = {
            name: {"iou": _number(iou), "dice": _number(dice)}
            for name, iou, dice in zip(self.classes, self.scores.iou, self.scores.dice, strict=True)
        }
        return {
            "loss": _number(self.loss),
            "mean_iou": _number(self.scores.mean_iou),
            "pixel_accuracy": _number(self.scores.pixel_accuracy),
            "per_class": per_class,
        }

    def table(self) -> str:
        """The per-class IoU and Dice as aligned text, with the overall figures."""
        width = max(12, *(len(name) for name in self.classes))
        lines = [f"{'class':<{width}}     IoU    Dice  true pixels"]
        for i, name in enumerate(self.classes):
            iou, dice = self.scores.iou[i], self.scores.dice[i]
            if math.isnan(iou):
                lines.append(f"{name:<{width}}  absent: not in the truth nor predicted")
            else:
                lines.append(f"{name:<{width}}  {iou:6.4f}  {dice:6.4f}  {self.scores.support[i]:11d}")
        lines.append(
            f"test/loss {self.loss:.4f}, test/mean_iou {self.scores.mean_iou:.4f}, test/pixel_accuracy "
            f"{self.scores.pixel_accuracy:.4f} on {self.images} images"
        )
        return "\n".join(lines)


def _number(value: float) -> float | None:
    return None if math.isnan(value) else value


def test_split(root: str | os.PathLike[str], info: RunInfo) -> SegmentationFolder:
    """The image and mask pairs at `root` (images/ and masks/), checked against the run's classes.

    A `classes.txt` in `root` or its parent must name the run's classes in the run's order.
    Images come with the run's preprocessing; masks stay at their size.

    Raises:
        DataError: no such folder, not a split folder, other class names, or a mask value
            that is not one of the run's classes nor its ignore index.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"--data {root}: no such folder; give a test split holding images/ and masks/")
    if not (root / "images").is_dir() and (root / "val").is_dir():
        raise DataError(f"--data {root} holds splits: give one of them, e.g. --data {root / 'val'}")
    for folder in (root, root.parent):
        names_file = folder / CLASSES_FILE
        if names_file.is_file():
            names = read_class_names(names_file)
            if names != info.classes:
                raise DataError(
                    f"{names_file} names the classes {', '.join(names)}, but the run was trained on "
                    f"{', '.join(info.classes)}; evaluate a run trained on these classes"
                )
            break
    image_transform = info.transform()

    def transform(image: Any, mask: Any) -> tuple[Any, Any]:
        return image_transform(image), mask

    return SegmentationFolder(root, info.classes, transform, info.ignore_index)


def _collate(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    return torch.stack([image for image, _ in batch]), [mask for _, mask in batch]


@torch.inference_mode()
def evaluate_segmentation(
    run: str | os.PathLike[str],
    data: str | os.PathLike[str],
    checkpoint: str = "best",
    batch_size: int = 8,
    workers: int = 0,
    device: torch.device | str | None = None,
    tensorboard: bool = True,
) -> SegmentationEvaluation:
    """Measure a segmentation run on the split at `data` and (by default) write the results into its TensorBoard.

    At the run's last step: `test/loss`, `test/mean_iou` and `test/pixel_accuracy` in the
    `test/` sub-run (beside the validation's curves); `test/iou/<class>` and `test/dice/<class>`
    (NaN for an absent class), the image `segmentation/confusion_matrix/test` and the text
    `test/report` in the run folder (`write_tensorboard`).

    Args:
        run: The run folder.
        data: A split folder: `images/` and `masks/` (index PNGs, as for training).
        checkpoint: "best", "last", or a weights file or checkpoint folder.
        batch_size: Images per forward pass.
        workers: DataLoader workers.
        device: Where to run; default the best accelerator present, else the CPU.
        tensorboard: Write the results into the run's TensorBoard.
    """
    model, info = load_run_model(run, checkpoint)
    if not info.segmentation:
        raise DeployError(f"the run's model is a classifier ({info.model}); use evaluate_run")
    dataset = test_split(data, info)
    device = torch.device(device) if device else best_device()
    model.to(device)
    loss_fn = SegmentationLoss(info.loss, info.ignore_index)
    counts = PixelCounts(info.num_classes, info.ignore_index)
    loss_sum, images = 0.0, 0
    for batch, masks in DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=_collate):
        logits = segmentation_logits(model(batch.to(device)))
        assert logits is not None
        for scores, mask in zip(logits.float(), masks, strict=True):
            mask = mask.to(device)[None]
            full = F.interpolate(scores[None], size=mask.shape[-2:], mode="bilinear", align_corners=False)
            loss_sum += float(loss_fn(full, mask))
            counts.add_logits(full, mask)
            images += 1
    matrix, ignored, _ = counts.read()
    report = SegmentationEvaluation(
        list(info.classes), images, loss_sum / images, segmentation_scores(matrix, ignored), matrix
    )
    if tensorboard:
        write_tensorboard(run_json_path(run).parent, report)
    return report


def write_tensorboard(run_dir: str | os.PathLike[str], report: SegmentationEvaluation, step: int | None = None) -> None:
    """Write `report` into the run's TensorBoard at `step` (default: the run's last step); nothing existing changes.

    `test/loss`, `test/mean_iou` and `test/pixel_accuracy` go into the `test/` sub-run under
    the names the validation's have in `validation/`, a point at the end of the training and
    validation charts; the per-class scalars, the confusion matrix and the report into new
    event files of the run itself.
    """
    step = last_step(Path(run_dir)) if step is None else step
    with RunWriter(str(run_dir)) as writer:
        for name, value in (
            ("loss", report.loss),
            ("mean_iou", report.scores.mean_iou),
            ("pixel_accuracy", report.scores.pixel_accuracy),
        ):
            writer.add_split_scalar("test", name, value, step)
        for name, iou, dice in zip(report.classes, report.scores.iou, report.scores.dice, strict=True):
            writer.add_scalar(f"test/iou/{tag_name(name)}", iou, step)
            writer.add_scalar(f"test/dice/{tag_name(name)}", dice, step)
        image = confusion_image(report.confusion, report.classes, "test set", unit="pixels", cells="shares")
        writer.add_image("segmentation/confusion_matrix/test", image, step)
        writer.add_text("test/report", report_table(report.scores, report.classes), step)
