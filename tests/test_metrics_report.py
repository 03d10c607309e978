"""The per-class report and confusion counts that `ClassReport` and `evaluate` share, against scikit-learn."""

from __future__ import annotations

import pytest
import torch
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from callbacks_kit.inspection.classification import ConfusionCounts, class_stats


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_per_class_report_matches_scikit_learn(seed: int):
    g = torch.Generator().manual_seed(seed)
    classes = 5
    targets = torch.randint(0, classes - 1, (200,), generator=g)  # the last class has no samples
    predictions = torch.where(
        torch.rand(200, generator=g) < 0.6, targets, torch.randint(0, classes, (200,), generator=g)
    )
    predictions[predictions == 2] = 3  # class 2 is never predicted: precision 0 by zero_division=0
    counts = ConfusionCounts()
    for part in range(4):  # counted batch by batch, as the callers do
        rows = slice(part * 50, (part + 1) * 50)
        counts.add(torch.nn.functional.one_hot(predictions[rows], classes).float(), targets[rows])
    matrix = counts.matrix()
    assert matrix.tolist() == confusion_matrix(targets, predictions, labels=range(classes)).tolist()
    stats = class_stats(matrix)
    precision, recall, f1, support = precision_recall_fscore_support(
        targets, predictions, labels=range(classes), zero_division=0
    )
    assert stats.precision == pytest.approx(precision.tolist(), abs=1e-12)
    assert stats.recall == pytest.approx(recall.tolist(), abs=1e-12)
    assert stats.f1 == pytest.approx(f1.tolist(), abs=1e-12)
    assert stats.support == support.tolist()
