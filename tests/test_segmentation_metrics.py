"""Segmentation metrics against NumPy and torchmetrics: absent classes, the ignore index, 2 processes equal 1."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from helpers.paths import REPO
from helpers.processes import run_distributed
from torchmetrics.classification import MulticlassConfusionMatrix, MulticlassJaccardIndex

from callbacks_kit.errors import DataError, TrainerError
from callbacks_kit.segmentation_metrics import (
    PixelCounts,
    SegmentationMetrics,
    image_iou,
    image_overlaps,
    segmentation_logits,
)

IGNORE = 255
WORKER = REPO / "tests" / "helpers" / "workers" / "segmentation_worker.py"


def reference(predicted: np.ndarray, truth: np.ndarray, classes: int, ignore: int | None) -> dict[str, object]:
    """Per-class IoU and Dice (NaN when absent from both), pixel accuracy: plain NumPy, pixel by pixel sets."""
    keep = np.ones_like(truth, dtype=bool) if ignore is None else truth != ignore
    p, t = predicted[keep], truth[keep]
    iou, dice = [], []
    for c in range(classes):
        inter = np.sum((p == c) & (t == c))
        union = np.sum((p == c) | (t == c))
        total = np.sum(p == c) + np.sum(t == c)
        iou.append(inter / union if union else math.nan)
        dice.append(2 * inter / total if total else math.nan)
    return {"iou": iou, "dice": dice, "accuracy": float(np.mean(p == t)), "mean_iou": float(np.nanmean(iou))}


def batch(seed: int, n: int = 4, classes: int = 5, size: int = 12, absent: int | None = 3, ignore_share: float = 0.1):
    """Logits and masks with one class absent from both (its logit pushed down) and some ignored pixels."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, size, size, generator=g)
    masks = torch.randint(0, classes, (n, size, size), generator=g)
    if absent is not None:
        masks[masks == absent] = 0
        logits[:, absent] -= 100
    masks[torch.rand(n, size, size, generator=g) < ignore_share] = IGNORE
    return logits, masks


def test_scores_equal_a_numpy_reference_with_an_absent_class_and_ignored_pixels():
    metrics = SegmentationMetrics(num_classes=5)
    all_logits, all_masks = [], []
    for seed in range(3):
        logits, masks = batch(seed)
        metrics.update({"out": logits, "aux": logits}, masks)  # torchvision's dict: "out" is counted
        all_logits.append(logits)
        all_masks.append(masks)
    scores = metrics.compute()
    expected = reference(torch.cat(all_logits).argmax(1).numpy(), torch.cat(all_masks).numpy(), 5, IGNORE)
    assert math.isnan(scores.iou[3]) and math.isnan(scores.dice[3]) and not scores.present[3]
    np.testing.assert_allclose(scores.iou, expected["iou"], rtol=1e-12)  # NaN where NaN
    np.testing.assert_allclose(scores.dice, expected["dice"], rtol=1e-12)
    assert scores.pixel_accuracy == pytest.approx(expected["accuracy"], rel=1e-12)
    assert scores.mean_iou == pytest.approx(expected["mean_iou"], rel=1e-12)  # over the 4 present classes
    assert scores.ignored == int(sum((m == IGNORE).sum() for m in all_masks))


def test_torchmetrics_agrees_on_present_classes_and_scores_an_absent_one_zero():
    logits, masks = batch(7, n=6)
    ours = SegmentationMetrics(num_classes=5)
    ours.update(logits, masks)
    scores = ours.compute()
    jaccard = MulticlassJaccardIndex(num_classes=5, average="none", ignore_index=IGNORE)(logits.argmax(1), masks)
    confusion = MulticlassConfusionMatrix(num_classes=5, ignore_index=IGNORE)(logits.argmax(1), masks)
    counts = PixelCounts(5, IGNORE)
    counts.add_logits(logits, masks)
    assert torch.equal(counts.read()[0], confusion)  # the same pixel counts
    present = [c for c in range(5) if c != 3]
    np.testing.assert_allclose([scores.iou[c] for c in present], jaccard[present].numpy(), rtol=1e-6)
    # torchmetrics' known pitfall: the absent class scores 0 and drags its macro mean down; ours leaves it out.
    assert float(jaccard[3]) == 0.0 and math.isnan(scores.iou[3])
    macro = MulticlassJaccardIndex(num_classes=5, average="macro", ignore_index=IGNORE)(logits.argmax(1), masks)
    assert float(macro) < scores.mean_iou == pytest.approx(float(jaccard[present].mean()), rel=1e-6)


def test_ignored_pixels_count_nowhere():
    logits, masks = batch(3, absent=None, ignore_share=0.0)
    clean = SegmentationMetrics(num_classes=5)
    clean.update(logits, masks)
    # The same pixels, and more marked ignored whatever the model says there: the scores of the rest only.
    hidden = masks.clone()
    hidden[:, :, :4] = IGNORE
    scrambled = logits.clone()
    scrambled[:, :, :, :4] = torch.randn_like(scrambled[:, :, :, :4])
    partial = SegmentationMetrics(num_classes=5)
    partial.update(scrambled, hidden)
    expected = reference(logits.argmax(1)[:, :, 4:].numpy(), masks[:, :, 4:].numpy(), 5, None)
    np.testing.assert_allclose(partial.compute().iou, expected["iou"], rtol=1e-12)
    assert partial.compute().ignored == 4 * 12 * 4
    assert sum(partial.compute().support) + partial.compute().ignored == sum(clean.compute().support)


def test_views_for_the_trainer_count_each_batch_once_and_name_every_number():
    names = ["background", "a/b", "c", "d", "e"]
    metrics = SegmentationMetrics(class_names=names)
    views = metrics.metrics()
    assert list(views)[:4] == ["mean_iou", "pixel_accuracy", "iou/background", "dice/background"]
    assert "iou/a_b" in views and len(views) == 2 + 2 * 5  # a "/" in a name would nest the tag
    logits, masks = batch(1)
    for view in views.values():  # what the Trainer does with each metric object of a batch
        view.update(logits, masks)
    single = SegmentationMetrics(num_classes=5)
    single.update(logits, masks)
    assert views["mean_iou"].compute() == pytest.approx(single.compute().mean_iou)
    assert math.isnan(views["iou/d"].compute())  # class 3 is absent
    assert views["dice/c"].compute() == pytest.approx(single.compute().dice[2])


def test_bad_input_is_refused_with_what_to_do():
    metrics = SegmentationMetrics(num_classes=5)
    with pytest.raises(TrainerError, match=r"\(N, C, H, W\) logits and \(N, H, W\) masks"):
        metrics.update(torch.randn(2, 5), torch.zeros(2, dtype=torch.long))
    with pytest.raises(TrainerError, match="gives 4 channel"):
        metrics.update(torch.randn(2, 4, 3, 3), torch.zeros(2, 3, 3, dtype=torch.long))
    metrics.update(torch.randn(1, 5, 3, 3), torch.full((1, 3, 3), 7))  # neither a class nor the ignore index
    with pytest.raises(DataError, match="outside 0..4 that is not the ignore index 255"):
        metrics.compute()
    with pytest.raises(TrainerError, match="2 class_names for num_classes=3"):
        SegmentationMetrics(num_classes=3, class_names=["a", "b"])


def test_one_logit_is_binary_and_outputs_without_logits_are_refused():
    logits = torch.tensor([[[[2.0, -1.0], [0.5, -3.0]]]])
    metrics = SegmentationMetrics(num_classes=2)
    metrics.update(logits, torch.tensor([[[1, 0], [0, 0]]]))
    assert metrics.compute().iou == [pytest.approx(2 / 3), pytest.approx(1 / 2)]
    assert segmentation_logits({"aux": logits}) is None and segmentation_logits({"logits": logits}) is logits


def test_per_image_iou_equals_the_reference_per_image():
    logits, masks = batch(5, n=3)
    predicted = logits.argmax(1)
    intersection, union = image_overlaps(predicted, masks, 5, IGNORE)
    for i, score in enumerate(image_iou(intersection, union).tolist()):
        assert score == pytest.approx(
            float(np.nanmean(reference(predicted[i].numpy(), masks[i].numpy(), 5, IGNORE)["iou"]))
        )
    nothing = image_iou(*image_overlaps(predicted[:1], torch.full_like(masks[:1], IGNORE), 5, IGNORE))
    assert math.isnan(float(nothing[0]))


@pytest.fixture(scope="module")
def worker_results(tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict]:
    """The worker's results in 1 and in 2 gloo processes."""
    found = {}
    for nproc in (1, 2):
        out = tmp_path_factory.mktemp(f"proc{nproc}")
        run_distributed(WORKER, str(out), nproc=nproc)
        found[nproc] = {int(p.stem.removeprefix("rank")): json.loads(p.read_text()) for p in out.glob("rank*.json")}
    return found


@pytest.mark.slow
def test_two_processes_give_the_scores_of_one(worker_results: dict[int, dict]):
    one, two = worker_results[1][0], worker_results[2]
    assert set(two) == {0, 1} and two[0]["num_processes"] == 2
    whole = {f"val/{key}": value for key, value in one["whole"].items()}  # the whole set at once, one process
    assert one["val"] == pytest.approx(whole, nan_ok=True) and math.isnan(one["val"]["val/iou/absent"])
    for rank in (0, 1):
        # The Trainer's validation: batches gathered from both processes, each sample once (31 samples: uneven).
        assert two[rank]["val"] == pytest.approx(one["val"], nan_ok=True)
        # Standalone: each process counts its own share, compute() sums the counts of both.
        assert two[rank]["reduced"] == pytest.approx(one["whole"], nan_ok=True)
    assert one["reduced"] == pytest.approx(one["whole"], nan_ok=True)
    # The views count the same pixels and rank the same images in 1 and 2 processes.
    assert two[0]["report_support"] == one["report_support"] == one["whole_support"]
    assert two[0]["confusion"] == one["confusion"] and sum(map(sum, one["confusion"])) == sum(one["whole_support"])
    assert two[0]["worst"] == one["worst"] and len(one["worst"]) == 5
