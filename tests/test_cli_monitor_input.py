"""`train --monitor` (which metric picks the best weights) and the input size a run takes from its data."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
from PIL import Image

from callbacks_kit.callbacks.early_stopping import EarlyStopping
from callbacks_kit.callbacks.model_checkpoint import ModelCheckpoint
from callbacks_kit.cli import build_parser, main
from callbacks_kit.cli.input_size import input_size
from callbacks_kit.cli.job_callbacks import checkpoint_callbacks, monitored
from callbacks_kit.data import eval_transform


def train_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["train", *argv])


@pytest.mark.parametrize(
    ("argv", "metric", "mode"),
    [
        ([], "val/accuracy", "max"),
        (["--ema", "0.99"], "val_ema/accuracy", "max"),  # the averaged weights are what an EMA run is for
        (["--monitor", "val/loss"], "val/loss", "min"),
        (["--ema", "0.99", "--monitor", "val_ema/loss"], "val_ema/loss", "min"),
        (["--ema", "0.99", "--monitor", "val/accuracy"], "val/accuracy", "max"),
        (["--monitor", "val/loss", "--monitor-mode", "max"], "val/loss", "max"),  # told otherwise
    ],
)
def test_monitor_ranks_checkpoints_and_early_stopping_by_a_mode_that_follows_the_metric(
    tmp_path: Path, argv: list[str], metric: str, mode: str
):
    args = train_args(*argv, "--early-stop-patience", "2")
    assert monitored(args) == (metric, mode)
    callbacks = checkpoint_callbacks(args, str(tmp_path))
    (checkpoint,) = [c for c in callbacks if isinstance(c, ModelCheckpoint)]
    (early,) = [c for c in callbacks if isinstance(c, EarlyStopping)]
    assert checkpoint.monitor is not None and (checkpoint.monitor.key, checkpoint.mode) == (metric, mode)
    assert (early.monitor.key, early.monitor.mode) == (metric, mode)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--monitor", "val_ema/accuracy"], "ranks the EMA's averaged weights, and this run keeps none: add --ema"),
        (["--monitor", "val/acc"], "--monitor val/acc is not a metric this run validates (did you mean val/accuracy?)"),
        (["--ema", "0.9", "--monitor", "train/loss"], "choose one of val/accuracy, val/loss, val_ema/accuracy"),
        (["--crop-ratio", "0.9"], "--crop-ratio sets how --data or --labels images are resized"),
    ],
)
def test_bad_monitor_and_crop_ratio_are_refused_before_any_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
):
    assert main(["train", "--epochs", "1", "--log-dir", str(tmp_path / "run"), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def write_images(folder: Path, sizes: list[tuple[int, int]]) -> None:
    """One image per size in each of two class folders."""
    for name in ("a", "b"):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i, size in enumerate(sizes):
            Image.new("RGB", size, (i * 40, 0, 0)).save(folder / name / f"{i}.png")


@pytest.mark.parametrize(
    ("sizes", "side", "why"),
    [
        ([(48, 60), (56, 56), (80, 64)], 56, "the training images' median shorter side, 56 px)"),
        ([(8, 8), (8, 10)], 32, "the training images' median shorter side, 8 px, raised to 32)"),
        ([(400, 300), (640, 480)], 224, "the training images' median shorter side, 300 px, capped at 224)"),
    ],
)
def test_the_default_input_size_follows_the_training_images(
    tmp_path: Path, sizes: list[tuple[int, int]], side: int, why: str
):
    write_images(tmp_path / "data" / "train", sizes)
    write_images(tmp_path / "data" / "val", [(999, 999)])  # validation images do not decide
    shape = input_size(train_args("--data", str(tmp_path / "data")))
    assert (shape.size, shape.resize, shape.crop_ratio) == (side, round(side / 0.875), 0.875)
    assert shape.describe() == (
        f"input {side}x{side} px ({why}; validation resizes the shorter side to {round(side / 0.875)} px and "
        f"centre-crops {side} (crop ratio 0.875, --crop-ratio)"
    )


def test_named_weights_bring_their_size_and_crop_and_image_size_and_crop_ratio_override(tmp_path: Path):
    write_images(tmp_path / "data", [(40, 40)])
    data = ["--data", str(tmp_path / "data")]
    # torchvision's ResNet-50 IMAGENET1K_V2 weights: resize 232, centre crop 224.
    shape = input_size(train_args(*data, "--model", "resnet50", "--weights", "IMAGENET1K_V2"))
    assert (shape.size, shape.resize) == (224, 232) and "resnet50 IMAGENET1K_V2 weights" in shape.why
    shape = input_size(train_args(*data, "--image-size", "64", "--crop-ratio", "1"))
    assert (shape.size, shape.resize, shape.why) == (64, 64, "--image-size")
    assert input_size(train_args("--image-size", "48")).describe() == (
        "input 48x48 px (--image-size); validation images are drawn at that size"
    )
    for bad in ("0", "1.5", "nan"):
        with pytest.raises(ValueError, match="--crop-ratio must be above 0 and at most 1"):
            input_size(train_args(*data, "--crop-ratio", bad))


def test_a_crop_ratio_of_one_keeps_the_border_that_the_default_trims():
    image = torch.zeros(3, 32, 32, dtype=torch.uint8)
    image[:, 0, :] = 255  # a white top row
    whole, cropped = eval_transform(32, 1.0)(image), eval_transform(32)(image)
    assert whole.shape == cropped.shape == (3, 32, 32)
    assert whole[:, 0, 16].min() > 2 and cropped[:, 0, 16].max() < 0  # normalised white, and black
