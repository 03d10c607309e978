"""`callbacks-kit lr-find`, `train --lr auto` and `train --ema`, and their bad input."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from callbacks_kit.cli import main

TINY = ["--train-samples", "48", "--val-samples", "24", "--batch-size", "16", "--image-size", "32"]
SWEEP = ["--lr-find-min", "1e-5", "--lr-find-max", "1", "--lr-find-steps", "6"]


def events(folder: Path) -> EventAccumulator:
    return EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0}).Reload()


def test_lr_find_writes_the_curve_and_suggests_an_lr(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["lr-find", *TINY, *SWEEP, "--freeze-backbone", "--log-dir", str(tmp_path / "find")]) == 0
    out = capsys.readouterr().out
    suggestion = re.search(r"suggested LR (\S+) \(", out)
    assert suggestion and f"callbacks-kit train --lr {suggestion.group(1)}" in out
    run = events(tmp_path / "find")
    assert run.Images("lr_find/curve") and len(run.Scalars("lr_find/smoothed_loss")) == 6
    assert run.Tensors("lr_find/suggestion/text_summary")


def test_train_lr_auto_prints_and_trains_with_the_suggestion_and_ema_validates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    argv = ["train", *TINY, *SWEEP, "--epochs", "1", "--no-progress", "--no-inspection", "--scheduler", "none"]
    argv += ["--model", "mobilenet_v3_small", "--lr", "auto", "--ema", "0.9", "--log-dir", str(tmp_path / "run")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    used = re.search(r"--lr auto: training with LR (\S+) ", out)
    assert used, out
    run = events(tmp_path / "run")
    lrs = [event.value for tag in run.Tags()["scalars"] if tag.startswith("lr/") for event in run.Scalars(tag)]
    assert lrs and all(f"{lr:.3g}" == used.group(1) for lr in lrs)  # every group trained with the suggestion
    assert events(tmp_path / "run" / "validation_ema").Scalars("accuracy")
    assert events(tmp_path / "run" / "validation").Scalars("accuracy")
    assert events(tmp_path / "run" / "lr_find").Images("lr_find/curve")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lr", "auto", "--resume", "last"], "--lr auto runs an LR range test for a new run"),
        (["--lr", "auto", "--lr-find-min", "1", "--lr-find-max", "0.1"], "--lr-find-min 1 is not below --lr-find-max"),
        (["--lr", "auto", "--lr-find-steps", "2"], "--lr-find-steps must be at least 5"),
        (["--ema", "1.5"], "--ema DECAY must be strictly between 0 and 1"),
        (["--ema", "0"], "--ema DECAY must be strictly between 0 and 1"),
        (["--ema", "0.99", "--ema-every", "0"], "--ema-every must be at least 1"),
    ],
)
def test_bad_options_are_refused_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
):
    assert main(["train", *TINY, "--epochs", "1", "--log-dir", str(tmp_path / "run"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not list((tmp_path / "run").glob("**/events.out.tfevents.*"))  # nothing trained, nothing written


def test_lr_find_range_is_checked_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    argv = ["lr-find", "--lr-find-min", "0.1", "--lr-find-max", "0.1", "--log-dir", str(tmp_path / "x")]
    assert main(argv) == 2
    assert "--lr-find-min 0.1 is not below --lr-find-max 0.1" in capsys.readouterr().err


def test_lr_must_be_a_number_or_auto(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit):
        main(["train", "--lr", "fast"])
    assert "a number or 'auto'" in capsys.readouterr().err
