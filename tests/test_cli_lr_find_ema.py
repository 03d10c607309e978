"""`callbacks-kit lr-find`, `train --lr auto` and `train --ema`, and their bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import safetensors
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from callbacks_kit.cli import main

TINY = ["--train-samples", "48", "--val-samples", "24", "--batch-size", "16", "--image-size", "32"]
SWEEP = ["--lr-find-min", "1e-5", "--lr-find-max", "1", "--lr-find-steps", "6"]


def events(folder: Path) -> EventAccumulator:
    return EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0}).Reload()


def test_lr_find_writes_the_curve_and_suggests_an_lr(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["lr-find", *TINY, *SWEEP, "--freeze-backbone", "--log-dir", str(tmp_path / "find")]) == 0
    out, err = capsys.readouterr()
    suggestion = re.search(r"suggested LR (\S+) \(", out)
    assert suggestion and f"callbacks-kit train --lr {suggestion.group(1)}" in out
    # A line per phase, and a progress bar of the sweep's steps in between.
    phases = [
        "lr-find: loading the built-in shapes and building resnet18",
        "input 32x32 px (--image-size)",
        "LR range test: sweeping the LR from 1e-05 to 1 over up to 6 steps of one batch each with the backbone frozen",
        "LR range test done in ",
        "suggested LR",
    ]
    assert [out.index(line) for line in phases] == sorted(out.index(line) for line in phases), out
    assert re.search(r"LR range test: 100%.*6/6", err), err
    run = events(tmp_path / "find")
    assert run.Images("lr_find/curve") and len(run.Scalars("lr_find/smoothed_loss")) == 6
    assert run.Tensors("lr_find/suggestion/text_summary")


def test_train_lr_auto_prints_and_trains_with_the_suggestion_and_ema_validates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    argv = ["train", *TINY, *SWEEP, "--epochs", "1", "--no-progress", "--no-inspection", "--scheduler", "none"]
    argv += ["--model", "mobilenet_v3_small", "--lr", "auto", "--ema", "0.9", "--log-dir", str(tmp_path / "run")]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    used = re.search(r"--lr auto: training with LR (\S+) ", out)
    assert used, out
    assert "6/6" not in err  # --no-progress: the sweep's bar too
    run = events(tmp_path / "run")
    lrs = [event.value for tag in run.Tags()["scalars"] if tag.startswith("lr/") for event in run.Scalars(tag)]
    assert lrs and all(f"{lr:.3g}" == used.group(1) for lr in lrs)  # every group trained with the suggestion
    assert events(tmp_path / "run" / "validation_ema").Scalars("accuracy")
    assert events(tmp_path / "run" / "validation").Scalars("accuracy")
    assert events(tmp_path / "run" / "lr_find").Images("lr_find/curve")
    # With --ema the best checkpoint ranks the averaged weights, and says so everywhere.
    last = {
        f"{prefix}/{name}": events(tmp_path / "run" / split).Scalars(name)[-1].value
        for prefix, split in (("val", "validation"), ("val_ema", "validation_ema"))
        for name in ("accuracy", "loss")
    }
    assert (
        f"val/accuracy {last['val/accuracy']:.4f}, val/loss {last['val/loss']:.4f}; "
        f"val_ema/accuracy {last['val_ema/accuracy']:.4f}, val_ema/loss {last['val_ema/loss']:.4f}"
    ) in out.split("done in")[-1]
    best = tmp_path / "run" / "checkpoints" / "best.safetensors"
    assert (
        f"best val_ema/accuracy {last['val_ema/accuracy']:.4f} after epoch 1: the EMA's averaged weights, in {best}"
        in out
    )
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert (info["monitor"], info["monitor_mode"], info["best_weights"]) == ("val_ema/accuracy", "max", "ema")
    with safetensors.safe_open(str(best), "pt") as f:
        assert f.metadata()["weights"] == "EMA"
    image = tmp_path / "one.png"
    Image.new("RGB", (32, 32)).save(image)
    assert main(["predict", str(tmp_path / "run"), str(image), "--cpu"]) == 0
    assert "weights: best (the EMA's averaged weights with the best val_ema/accuracy)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lr", "auto", "--resume", "last"], "--lr auto runs an LR range test for a new run"),
        (["--lr", "auto", "--lr-find-min", "1", "--lr-find-max", "0.1"], "--lr-find-min 1 is not below --lr-find-max"),
        (["--lr", "auto", "--lr-find-steps", "2"], "--lr-find-steps must be at least 5"),
        (["--ema", "1.5"], "--ema DECAY must be strictly between 0 and 1"),
        (["--ema", "0"], "--ema DECAY must be strictly between 0 and 1"),
        (["--ema", "0.99", "--ema-every", "0"], "--ema-every must be at least 1"),
        (["--ema-buffers", "recompute"], "--ema-buffers set how the EMA is kept, and there is none: add --ema DECAY"),
        (["--ema-every", "4"], "--ema-every set how the EMA is kept, and there is none: add --ema DECAY"),
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


def test_lr_find_without_a_suggestion_exits_2_and_says_where_the_curve_is(tmp_path: Path, capsys):
    find = tmp_path / "find"
    # At LRs of 1e3 and more the loss diverges at once: fewer than 3 finite points, no suggestion.
    argv = ["lr-find", *TINY, "--lr-find-min", "1e3", "--lr-find-max", "1e4", "--lr-find-steps", "5"]
    assert main([*argv, "--log-dir", str(find)]) == 2
    captured = capsys.readouterr()
    assert "LR range test: no suggestion" in captured.out and "train --lr" not in captured.out
    assert "the LR range test found no LR to suggest (fewer than 3 finite points" in captured.err
    assert f"the curve is in {find}" in captured.err and "--lr-find-min/--lr-find-max" in captured.err
    assert events(find).Images("lr_find/curve")  # the curve is there to look at


def test_lr_find_on_one_training_sample_with_batchnorm_is_one_line(tmp_path: Path, capsys):
    argv = ["lr-find", "--train-samples", "1", "--val-samples", "4", "--image-size", "32", *SWEEP]
    assert main([*argv, "--log-dir", str(tmp_path / "find")]) == 2
    err = capsys.readouterr().err
    assert "train_loader holds 1 sample in all (--train-samples, --val-split), and BatchNorm layers" in err
    assert "layer4.0.bn1" in err and "Traceback" not in err and err.count("\n") == 1
