"""The per-class report and confusion counts of `callbacks_kit.metrics`, against scikit-learn."""

from __future__ import annotations

import pytest
import torch
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from callbacks_kit.metrics import confusion_counts, per_class_report


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_per_class_report_matches_scikit_learn(seed: int):
    g = torch.Generator().manual_seed(seed)
    classes = 5
    targets = torch.randint(0, classes - 1, (200,), generator=g)  # the last class has no samples
    predictions = torch.where(
        torch.rand(200, generator=g) < 0.6, targets, torch.randint(0, classes, (200,), generator=g)
    )
    predictions[predictions == 2] = 3  # class 2 is never predicted: precision 0 by zero_division=0
    counts = confusion_counts(predictions, targets, classes)
    assert counts.tolist() == confusion_matrix(targets, predictions, labels=range(classes)).tolist()
    report = per_class_report(counts)
    precision, recall, f1, support = precision_recall_fscore_support(
        targets, predictions, labels=range(classes), zero_division=0
    )
    assert report["precision"].tolist() == pytest.approx(precision.tolist(), abs=1e-12)
    assert report["recall"].tolist() == pytest.approx(recall.tolist(), abs=1e-12)
    assert report["f1"].tolist() == pytest.approx(f1.tolist(), abs=1e-12)
    assert report["support"].tolist() == support.tolist()
