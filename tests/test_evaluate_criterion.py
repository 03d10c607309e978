"""evaluate's test/loss is the run's own criterion (its label smoothing too), as its val/loss is; nll beside it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers.images import write_image_folder
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.nn import functional as F
from torchvision.datasets import ImageFolder

from callbacks_kit.cli import build_parser, main
from callbacks_kit.cli.train import train
from callbacks_kit.deploy import evaluate_run, load_run_model
from callbacks_kit.deploy.run_info import RUN_INFO


def test_test_loss_is_the_runs_val_loss_criterion_and_nll_the_plain_cross_entropy(tmp_path: Path, capsys):
    data, run = tmp_path / "data", tmp_path / "run"
    write_image_folder(data, per_class=2)
    argv = ["train", "--data", str(data), "--label-smoothing", "0.2", "--epochs", "1", "--image-size", "32",
            "--batch-size", "8", "--workers", "0", "--no-progress", "--no-inspection",
            "--scheduler", "none", "--log-dir", str(run)]  # fmt: skip
    metrics = train(build_parser().parse_args(argv))
    assert json.loads((run / RUN_INFO).read_text())["label_smoothing"] == 0.2
    # The validation images measured again, in batches of another size: the run's own val/loss.
    report = evaluate_run(run, data / "val", batch_size=5, device="cpu", tensorboard=False)
    assert report.loss == pytest.approx(metrics["val/loss"], rel=1e-5)
    # Both against torch's cross-entropy on the model's logits, computed here.
    model, info = load_run_model(run)
    images = ImageFolder(str(data / "val"), transform=info.transform())
    assert images.classes == info.classes  # the run trained on the same folder order
    inputs = torch.stack([image for image, _ in images])
    targets = torch.tensor(images.targets)
    with torch.inference_mode():
        logits = model(inputs)
    assert report.nll == pytest.approx(float(F.cross_entropy(logits, targets)), rel=1e-5)
    assert report.loss == pytest.approx(float(F.cross_entropy(logits, targets, label_smoothing=0.2)), rel=1e-5)
    assert report.nll != pytest.approx(report.loss, rel=1e-3)
    capsys.readouterr()
    assert main(["evaluate", str(run), "--data", str(data / "val"), "--cpu"]) == 0
    out = capsys.readouterr().out
    assert f"test/loss {report.loss:.4f} (cross-entropy with label smoothing 0.2, as the run's val/loss)" in out
    assert f"test/nll {report.nll:.4f} (plain cross-entropy)" in out

    def last(split: str, tag: str) -> float:  # the per-split scalars are in sub-runs, under the same tag
        return EventAccumulator(str(run / split), size_guidance={"scalars": 0}).Reload().Scalars(tag)[-1].value

    assert last("test", "loss") == pytest.approx(last("validation", "loss"), rel=1e-5)
    assert last("test", "nll") == pytest.approx(report.nll, rel=1e-6)
