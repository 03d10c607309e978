"""torchmetrics `Metric` objects in `Trainer(metrics=...)`, and the TopLosses and ClassReport views: the values
over the whole set, each sample once, in 1 and 2 processes (31 samples: an uneven last batch)."""

import json
import runpy
import sys
from pathlib import Path

import pytest
import torch
from helpers.paths import WORKERS
from helpers.processes import run_distributed
from helpers.tiny import tiny_classification_data, tiny_mlp
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics.classification import MulticlassF1Score

from callbacks_kit import Trainer, TrainerError

WORKER = WORKERS / "gathered_validation_worker.py"


def check(ranks: list[dict], processes: int) -> None:
    for rank in ranks:
        assert rank["num_processes"] == processes
        results = rank["results"]
        assert rank["order"] == ["val/loss", "val/accuracy", "val/tm_accuracy", "val/f1", "val/samples"]  # as given
        assert results["val/samples"] == 31  # each sample once: no padding, no second count by a sync
        assert abs(results["val/f1"] - rank["whole_f1"]) < 1e-6
        assert abs(results["val/tm_accuracy"] - rank["whole_accuracy"]) < 1e-6
        assert abs(results["val/tm_accuracy"] - results["val/accuracy"]) < 1e-6  # the built-in agrees
    main = ranks[0]
    losses = torch.tensor(main["whole_losses"])
    expected = losses.topk(5)
    assert main["top_positions"] == expected.indices.tolist()
    assert torch.allclose(torch.tensor(main["top_losses"]), expected.values, atol=1e-5)
    assert sum(main["support"]) == 31
    assert abs(sum(main["f1"]) / 3 - main["whole_f1"]) < 1e-6  # macro F1: the report agrees with torchmetrics
    for other in ranks[1:]:  # only the main process keeps the views
        assert other["top_positions"] is None and other["support"] is None


def test_one_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(sys, "argv", [str(WORKER), str(tmp_path)])
    runpy.run_path(str(WORKER), run_name="__main__")
    check([json.loads((tmp_path / "rank0.json").read_text())], 1)


@pytest.mark.slow
def test_two_processes_with_an_uneven_last_batch(tmp_path: Path):
    run_distributed(WORKER, str(tmp_path))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    check(ranks, 2)
    assert ranks[0]["results"] == ranks[1]["results"]


def trainer_with(metric) -> Trainer:
    model = tiny_mlp()
    return Trainer(
        model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(), metrics={"m": metric},
        progress_bar=False,
    )  # fmt: skip


def test_a_metric_object_that_gives_several_numbers_is_refused_before_training():
    trainer = trainer_with(MulticlassF1Score(num_classes=3, average=None))
    data = DataLoader(tiny_classification_data(16), batch_size=8)
    with pytest.raises(TrainerError, match=r"metric 'm' \(MulticlassF1Score\) computes \(3,\); val/m needs one number"):
        trainer.fit(data, data)
    assert trainer.state.global_step == 0


def test_a_metric_object_that_cannot_take_the_batch_or_is_not_a_metric():
    data = DataLoader(tiny_classification_data(16), batch_size=8)
    with pytest.raises(TrainerError, match=r"metric 'm' \(MulticlassF1Score\) cannot take the first batch"):
        trainer_with(MulticlassF1Score(num_classes=2)).fit(data, data)
    with pytest.raises(TrainerError, match="metric 'm' is a str: pass a function"):
        trainer_with("accuracy").fit(data, data)
