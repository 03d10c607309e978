"""Segmentation metrics from pixel confusion counts: per-class IoU and Dice, mean IoU, pixel accuracy.

Every pixel of a batch lands in one cell of a `(classes, classes)` count (rows: true class,
columns: predicted) kept on the device and added to with `index_add_`: no boolean mask, no
`bincount` (whose output size reads the largest index back), so a batch never waits for the
host. Pixels whose target is the ignore index land in a spare slot and count nowhere; targets
outside `[0, classes)` that are not the ignore index land in another, reported at `compute`.

From the counts, per class c: IoU = tp / (tp + fp + fn) and Dice = 2 tp / (2 tp + fp + fn).
A class absent from both the truth and the predictions has no score: NaN, left out of the
means (not 0, which would punish a model for a class the data never shows, and not 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from callbacks_kit.choices import IGNORE_INDEX as IGNORE_INDEX
from callbacks_kit.errors import DataError, TrainerError


def segmentation_logits(outputs: Any) -> torch.Tensor | None:
    """`(N, C, H, W)` class scores from a model's outputs, or None when there are none.

    A tensor is taken as it is; from a mapping, the `"out"` entry (torchvision's segmentation
    models return `{"out": logits, "aux": ...}`) or else `"logits"`; from an object, its `logits`.
    """
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, Mapping):
        for key in ("out", "logits"):
            if isinstance(outputs.get(key), torch.Tensor):
                return outputs[key]
        return None
    logits = getattr(outputs, "logits", None)
    return logits if isinstance(logits, torch.Tensor) else None


def class_predictions(logits: torch.Tensor) -> tuple[torch.Tensor, int]:
    """`(predicted classes (N, H, W), number of classes)` of `(N, C, H, W)` logits; one channel is binary at 0."""
    if logits.shape[1] == 1:
        return (logits[:, 0] > 0).long(), 2
    return logits.argmax(dim=1), int(logits.shape[1])


def segmentation_problem(logits: Any, targets: Any) -> str | None:
    """What keeps `(logits, targets)` from being counted, or None when they fit (decided from shapes alone)."""
    if not isinstance(logits, torch.Tensor) or not isinstance(targets, torch.Tensor):
        return (
            f"needs (N, C, H, W) logits (a tensor, or a dict with 'out') and (N, H, W) masks, got "
            f"{type(logits).__name__} and {type(targets).__name__}"
        )
    if logits.ndim != 4 or targets.ndim != 3 or logits.shape[:1] + logits.shape[2:] != targets.shape:
        return (
            f"needs (N, C, H, W) logits and (N, H, W) masks of the same N, H and W, got {tuple(logits.shape)} and "
            f"{tuple(targets.shape)}"
        )
    if targets.is_floating_point() or targets.dtype == torch.bool:
        return f"needs integer class-index masks (torch.long), got {targets.dtype}"
    return None


class PixelCounts:
    """A pixel confusion count on the device: `classes * classes` cells, then ignored and out-of-range pixels.

    Args:
        num_classes: Classes; None takes them from the first batch's logits.
        ignore_index: Target value that counts nowhere (None: every value counts).
    """

    def __init__(self, num_classes: int | None = None, ignore_index: int | None = IGNORE_INDEX) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.counts: torch.Tensor | None = None

    def reset(self) -> None:
        """Forget the counts."""
        self.counts = None

    def add_logits(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Count the argmax of `(N, C, H, W)` logits (one channel: `> 0`) against `(N, H, W)` targets."""
        predictions, classes = class_predictions(logits.detach())
        self.add(predictions, targets, classes)

    def add(self, predictions: torch.Tensor, targets: torch.Tensor, num_classes: int | None = None) -> None:
        """Count predicted class indices against targets of the same shape (no host read)."""
        classes = self.num_classes or num_classes
        if classes is None:
            raise TrainerError("PixelCounts: give num_classes, or count logits (add_logits), which know it")
        if self.counts is None:
            self.num_classes = classes
            self.counts = torch.zeros(classes * classes + 2, dtype=torch.long, device=predictions.device)
        elif classes != self.num_classes:
            raise TrainerError(f"PixelCounts: a batch of {classes} classes after batches of {self.num_classes}")
        self.counts.index_add_(0, cell_index(predictions, targets, classes, self.ignore_index), _ones(predictions))

    def read(self) -> tuple[torch.Tensor, int, int]:
        """`(matrix (C, C), ignored pixels, out-of-range pixels)` on the host, in one read."""
        if self.counts is None or self.num_classes is None:
            raise TrainerError("PixelCounts: nothing was counted yet")
        host = self.counts.cpu()
        classes = self.num_classes
        return host[: classes * classes].view(classes, classes), int(host[-2]), int(host[-1])


def cell_index(
    predictions: torch.Tensor, targets: torch.Tensor, classes: int, ignore_index: int | None
) -> torch.Tensor:
    """Flat index of each pixel's cell: `true * classes + predicted`, or the ignored and out-of-range slots."""
    truth = targets.long().flatten()
    predicted = predictions.long().flatten()
    cells = truth * classes + predicted
    inside = (truth >= 0) & (truth < classes)
    ignored = truth == ignore_index if ignore_index is not None else torch.zeros_like(inside)
    spare = torch.where(ignored, classes * classes, classes * classes + 1)
    return torch.where(inside & ~ignored, cells, spare)


def _ones(like: torch.Tensor) -> torch.Tensor:
    return torch.ones(like.numel(), dtype=torch.long, device=like.device)


def image_overlaps(
    predictions: torch.Tensor, targets: torch.Tensor, classes: int, ignore_index: int | None = IGNORE_INDEX
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image and class, `(intersection, union)` pixel counts, each `(N, classes)`, on the device.

    Ignored and out-of-range target pixels count for neither.
    """
    n = predictions.shape[0]
    truth = targets.long().reshape(n, -1)
    predicted = predictions.long().reshape(n, -1)
    valid = (truth >= 0) & (truth < classes)
    if ignore_index is not None:
        valid &= truth != ignore_index
    base = torch.arange(n, device=truth.device).unsqueeze(1) * classes

    def count(index: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        flat = torch.where(keep, base + index, n * classes).flatten()  # pixels not kept go to a spare slot
        out = torch.zeros(n * classes + 1, dtype=torch.long, device=truth.device)
        return out.index_add_(0, flat, torch.ones_like(flat))[:-1].view(n, classes)

    safe_truth = truth.clamp(0, classes - 1)
    intersection = count(safe_truth, valid & (predicted == truth))
    return intersection, count(safe_truth, valid) + count(predicted, valid) - intersection


def image_iou(intersection: torch.Tensor, union: torch.Tensor) -> torch.Tensor:
    """Each image's mean IoU over the classes in its truth or prediction; NaN for an image with no valid pixel."""
    present = union > 0
    ious = intersection.double() / union.clamp_min(1).double()
    return torch.where(present, ious, torch.zeros_like(ious)).sum(1) / present.sum(1).double()


@dataclass
class SegmentationScores:
    """Per-class IoU and Dice (NaN for a class absent from truth and predictions), pixel accuracy, pixel counts.

    Attributes:
        iou, dice: One value per class, NaN where the class is absent.
        pixel_accuracy: Right pixels over all counted pixels (NaN when none was counted).
        support: True pixels per class.
        predicted: Predicted pixels per class.
        ignored: Pixels whose target was the ignore index (counted nowhere).
    """

    iou: list[float]
    dice: list[float]
    pixel_accuracy: float
    support: list[int]
    predicted: list[int]
    ignored: int = 0

    @property
    def present(self) -> list[bool]:
        """Whether each class is in the truth or the predictions (has a score)."""
        return [s + p > 0 for s, p in zip(self.support, self.predicted, strict=True)]

    @property
    def mean_iou(self) -> float:
        """Mean IoU over the present classes (NaN when none is)."""
        return _nanmean(self.iou)

    @property
    def mean_dice(self) -> float:
        """Mean Dice over the present classes (NaN when none is)."""
        return _nanmean(self.dice)

    def named(self, class_names: Sequence[str]) -> dict[str, float]:
        """`{"mean_iou", "pixel_accuracy", "iou/<class>", "dice/<class>"}`: what the Trainer logs under `val/`."""
        values = {"mean_iou": self.mean_iou, "pixel_accuracy": self.pixel_accuracy}
        for name, iou, dice in zip(class_names, self.iou, self.dice, strict=True):
            values[f"iou/{tag_name(name)}"] = iou
            values[f"dice/{tag_name(name)}"] = dice
        return values


def _nanmean(values: Sequence[float]) -> float:
    scored = [v for v in values if not math.isnan(v)]
    return sum(scored) / len(scored) if scored else math.nan


def tag_name(name: str) -> str:
    """A class name as one part of a TensorBoard tag: no `/` (which would nest it), no surrounding spaces."""
    return str(name).strip().replace("/", "_") or "_"


def segmentation_scores(matrix: torch.Tensor, ignored: int = 0) -> SegmentationScores:
    """The scores of a `(classes, classes)` pixel count (rows: true class)."""
    m = matrix.double()
    tp = m.diag()
    truth, predicted = m.sum(dim=1), m.sum(dim=0)
    union = truth + predicted - tp
    iou = torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, math.nan))
    dice = torch.where(union > 0, 2 * tp / (truth + predicted).clamp_min(1), torch.full_like(tp, math.nan))
    total = float(m.sum())
    return SegmentationScores(
        iou=iou.tolist(),
        dice=dice.tolist(),
        pixel_accuracy=float(tp.sum()) / total if total else math.nan,
        support=[int(v) for v in truth.tolist()],
        predicted=[int(v) for v in predicted.tolist()],
        ignored=ignored,
    )


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class SegmentationMetrics:
    """Mean IoU, pixel accuracy, per-class IoU and Dice over a validation: a metric object on pixel counts.

    `update(outputs, targets)` counts a batch on the device (outputs: `(N, C, H, W)` logits or a
    dict with `"out"`; targets: `(N, H, W)` class indices); `compute()` reads the counts once
    and returns `SegmentationScores`. In several processes that each counted their own batches,
    `compute()` first sums the counts of every process (an all-reduce), unless
    `distributed_available_fn()` says no, as torchmetrics does.

    For the `Trainer`, `metrics()` gives one metric object per logged number, all reading these
    counts (each batch counted once, however many of them are passed):
    `Trainer(metrics=SegmentationMetrics(class_names=names).metrics())` logs `val/mean_iou`,
    `val/pixel_accuracy`, `val/iou/<class>` and `val/dice/<class>`. The Trainer updates them
    with batches gathered from every process, so they count the whole set without a sync.

    Args:
        num_classes: Classes; default `len(class_names)`, else the first batch's channels.
        class_names: One name per class (the per-class tags); default `0, 1, ...`.
        ignore_index: Target value counted nowhere (255, the void label of VOC masks); None: none.
    """

    def __init__(
        self,
        num_classes: int | None = None,
        class_names: Sequence[str] | None = None,
        ignore_index: int | None = IGNORE_INDEX,
    ) -> None:
        if class_names is not None and num_classes is not None and len(class_names) != num_classes:
            raise TrainerError(
                f"SegmentationMetrics: {len(class_names)} class_names for num_classes={num_classes}; give one name "
                "per class"
            )
        if num_classes is not None and num_classes < 1:
            raise TrainerError(f"SegmentationMetrics: num_classes must be at least 1, got {num_classes}")
        self.class_names = [str(name) for name in class_names] if class_names is not None else None
        self.counts = PixelCounts(num_classes or (len(class_names) if class_names else None), ignore_index)
        self.distributed_available_fn: Callable[[], bool] = _distributed
        self._last: tuple[Any, Any] | None = None
        self._scores: tuple[bool, SegmentationScores] | None = None

    @property
    def ignore_index(self) -> int | None:
        """The target value counted nowhere."""
        return self.counts.ignore_index

    def update(self, outputs: Any, targets: torch.Tensor) -> None:
        """Count one batch; the same `(outputs, targets)` objects again (another view's update) count once."""
        if self._last is not None and self._last[0] is outputs and self._last[1] is targets:
            return
        logits = segmentation_logits(outputs)
        problem = segmentation_problem(logits, targets)
        if problem is not None:
            raise TrainerError(f"SegmentationMetrics {problem}")
        assert logits is not None
        classes = 2 if logits.shape[1] == 1 else logits.shape[1]
        if self.counts.num_classes is not None and classes != self.counts.num_classes:
            raise TrainerError(
                f"SegmentationMetrics: the model gives {logits.shape[1]} channel(s) ({classes} classes) but "
                f"{self.counts.num_classes} classes were given; pass one class name per output channel"
            )
        self.counts.add_logits(logits, targets)
        self._last, self._scores = (outputs, targets), None

    def reset(self) -> None:
        """Forget the counts (at each validation start)."""
        self.counts.reset()
        self._last, self._scores = None, None

    def compute(self) -> SegmentationScores:
        """The scores of everything counted since the last reset (summed over processes, see the class)."""
        sync = self.distributed_available_fn()
        return self.scores(sync)

    def scores(self, sync: bool) -> SegmentationScores:
        """The scores, all-reduced over processes first when `sync`; computed once until the next update."""
        if self._scores is not None and self._scores[0] == sync:
            return self._scores[1]
        counts = self.counts.counts
        if counts is None:
            raise TrainerError("SegmentationMetrics: compute() before any update(); validate at least one batch")
        if sync:
            counts = counts.clone()
            dist.all_reduce(counts)
        classes = self.counts.num_classes
        assert classes is not None
        host = counts.cpu()
        if int(host[-1]):
            raise DataError(
                f"{int(host[-1])} mask pixels hold a class index outside 0..{classes - 1} that is not the ignore index "
                f"{self.ignore_index}: give the model one output per class (num_classes), fix the masks, or set "
                "ignore_index to the value that marks pixels to ignore"
            )
        result = segmentation_scores(host[: classes * classes].view(classes, classes), int(host[-2]))
        self._scores = (sync, result)
        return result

    def names(self) -> list[str]:
        """The class names of the per-class tags."""
        if self.class_names is not None:
            return self.class_names
        if self.counts.num_classes is None:
            raise TrainerError("SegmentationMetrics.metrics(): give num_classes or class_names to name the tags")
        return [str(i) for i in range(self.counts.num_classes)]

    def metrics(self, per_class: bool = True) -> dict[str, ScoreView]:
        """One metric object per number for `Trainer(metrics=...)`: mean IoU, pixel accuracy, per-class IoU, Dice."""
        keys = ["mean_iou", "pixel_accuracy"]
        if per_class:
            for name in self.names():
                keys += [f"iou/{tag_name(name)}", f"dice/{tag_name(name)}"]
        if len(set(keys)) != len(keys):
            raise TrainerError(f"SegmentationMetrics: two classes share a tag name in {self.names()}; rename one")
        return {key: ScoreView(self, key) for key in keys}


class ScoreView:
    """One number of a `SegmentationMetrics` as a metric object (`update`/`compute`/`reset`) for the Trainer.

    Every view of one `SegmentationMetrics` reads the same counts; a batch is counted once.
    """

    def __init__(self, source: SegmentationMetrics, key: str) -> None:
        self.source, self.key = source, key
        self.distributed_available_fn: Callable[[], bool] = _distributed

    def update(self, outputs: Any, targets: torch.Tensor) -> None:
        """Count the batch (once for all the views)."""
        self.source.update(outputs, targets)

    def reset(self) -> None:
        """Forget the counts."""
        self.source.reset()

    def compute(self) -> float:
        """The number of this view (NaN for an absent class)."""
        scores = self.source.scores(self.distributed_available_fn())
        return scores.named(self.source.names())[self.key]
