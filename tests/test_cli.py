"""The main job, `callbacks-kit train`, as a user runs it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from helpers.images import write_image_folder
from helpers.paths import REPO

from callbacks_kit.cli import main
from callbacks_kit.cli.run_dir import tensorboard_command

TINY = [
    "--epochs",
    "1",
    "--train-samples",
    "48",
    "--val-samples",
    "24",
    "--batch-size",
    "16",
    "--image-size",
    "32",
    "--no-progress",
]
TINY_DATA = TINY[:2] + TINY[6:]  # without the shapes sizes, which --data refuses


def test_main_job_tiny_run_writes_a_tensorboard_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["train", *TINY, "--log-dir", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert f"run written to {tmp_path / 'run'}" in out
    assert f"open it with: {tensorboard_command(tmp_path / 'run')}\n" in out  # runs as printed: test_cli_help
    assert list((tmp_path / "run").glob("events.out.tfevents.*"))


def test_image_folder_with_train_and_val(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    write_image_folder(tmp_path / "data")  # 40 px PNGs
    args = [
        "train",
        "--data",
        str(tmp_path / "data"),
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--workers",
        "0",
        "--no-progress",
        "--log-dir",
        str(tmp_path / "run"),
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "6 classes" in out
    # No --image-size: the input fits the data, and the start says so with what validation does.
    assert (
        "\ninput 40x40 px (the training images' median shorter side, 40 px); validation resizes the shorter side "
        "to 46 px and centre-crops 40 (crop ratio 0.875, --crop-ratio)\n"
    ) in out
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert (info["image_size"], info["resize"]) == (40, 46)


def test_image_folder_split_and_local_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    write_image_folder(tmp_path / "data", split=False)
    weights = tmp_path / "imagenet_like.pth"
    torch.save(torchvision.models.resnet18(num_classes=1000).state_dict(), weights)
    args = [
        "train",
        "--data",
        str(tmp_path / "data"),
        "--val-split",
        "0.25",
        "--weights",
        str(weights),
        "--epochs",
        "1",
        "--image-size",
        "32",
        "--batch-size",
        "8",
        "--workers",
        "0",
        "--no-progress",
        "--log-dir",
        str(tmp_path / "run"),
    ]
    assert main(args) == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "/no/such/folder"], "no such folder"),
        (["--model", "resnet19"], "unknown torchvision model 'resnet19'; closest: resnet18"),
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["--mixed-precision", "fp16", "--cpu"], "needs a CUDA GPU"),
        (["--kernel-layers", "layer1"], "layer 'layer1' is a Sequential, not an nn.Conv2d; kernels are drawn from"),
    ],
)
def test_bad_options_get_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str], args, message):
    tiny = TINY_DATA if "--data" in args else TINY
    assert main(["train", *tiny, "--log-dir", str(tmp_path / "run"), *args]) == 2
    assert message in capsys.readouterr().err


def test_empty_image_folder_is_explained(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    (tmp_path / "data" / "cats").mkdir(parents=True)
    assert main(["train", *TINY_DATA, "--data", str(tmp_path / "data"), "--log-dir", str(tmp_path / "run")]) == 2
    assert "not an ImageFolder tree" in capsys.readouterr().err


@pytest.mark.slow
def test_main_job_default_reaches_90_percent(tmp_path: Path):
    """The README's main job, as a subprocess with its defaults: the README's accuracy bar (90%)."""
    result = subprocess.run(
        [sys.executable, "-m", "callbacks_kit", "train", "--no-progress", "--log-dir", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    accuracy = float(re.search(r"val/accuracy (\d\.\d+)", result.stdout.split("done in")[-1]).group(1))
    print(result.stdout)
    assert accuracy >= 0.90


@pytest.mark.parametrize("samples", ["16", "32", "64"])
def test_main_job_one_cycle_on_one_two_and_four_steps(tmp_path: Path, samples: str):
    # With pct_start 0.25, 4 steps made OneCycleLR divide by zero (its warm-up phase ended at step 0).
    assert main(["train", *TINY, "--train-samples", samples, "--log-dir", str(tmp_path / "run")]) == 0


def test_a_dead_peer_during_training_is_one_line_that_points_at_the_other_process(monkeypatch, capsys):
    from callbacks_kit import cli

    def lost_peer(args):
        raise RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:561] Connection closed by peer [::1]:4107")

    monkeypatch.setattr(cli.train, "run", lost_peer)
    assert main(["train"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("callbacks-kit train: error: another process of this launch failed"), err
    assert "Connection closed by peer" in err and err.count("\n") == 1


def test_an_error_that_is_not_a_peer_failure_still_raises(monkeypatch):
    from callbacks_kit import cli

    def broken(args):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)")

    monkeypatch.setattr(cli.train, "run", broken)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        main(["train"])
