"""Smoke tests: the fine-tuning and segmentation examples run with --fast and write their runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.processes import run_example
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def event_run(run: Path) -> EventAccumulator:
    assert len(list(run.glob("events.out.tfevents.*"))) == 1  # one event file per run folder
    return EventAccumulator(str(run), size_guidance={"scalars": 0, "images": 0}).Reload()


@pytest.mark.slow
def test_finetune_gradual_unfreeze(tmp_path: Path):
    out = run_example("finetune_gradual_unfreeze.py", "--fast", "--log-dir", str(tmp_path))
    for stage in ("epoch 1: unfroze layer4", "epoch 2: unfroze layer3", "epoch 3: unfroze conv1, bn1, layer1, layer2"):
        assert stage in out
    assert "predicted" in out and "val/accuracy" in out
    events = event_run(tmp_path)
    tags = set(events.Tags()["scalars"])
    assert {"lr/fc", "lr/layer4", "lr/layer3", "lr/conv1+bn1+layer1+layer2", "lr/fc/no_decay"} <= tags
    # After epoch 3 every stage runs at the head's LR times its factor.
    last = {
        tag: events.Scalars(tag)[-1].value for tag in ("lr/fc", "lr/layer4", "lr/layer3", "lr/conv1+bn1+layer1+layer2")
    }
    assert last["lr/layer4"] == pytest.approx(0.5 * last["lr/fc"], rel=1e-5)
    assert last["lr/layer3"] == pytest.approx(0.25 * last["lr/fc"], rel=1e-5)
    assert last["lr/conv1+bn1+layer1+layer2"] == pytest.approx(0.1 * last["lr/fc"], rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["bce-dice", "dice"])
def test_segmentation_dice(tmp_path: Path, loss: str):
    out = run_example("segmentation_dice.py", "--fast", "--loss", loss, "--log-dir", str(tmp_path))
    assert f"{loss}: val/mean_iou" in out
    events = event_run(tmp_path)
    assert "lr/group0" in events.Tags()["scalars"]
    validation = set(event_run(tmp_path / "validation").Tags()["scalars"])
    assert {"loss", "mean_iou", "iou/circle", "dice/ring"} <= validation
    images = set(events.Tags()["images"])
    assert {"segmentation/overlays", "segmentation/worst/val", "segmentation/confusion_matrix/val"} <= images
    assert "segmentation_report/val/text_summary" in events.Tags()["tensors"]
    assert (tmp_path / "checkpoints" / "best.safetensors").is_file()  # kept by val/mean_iou


@pytest.mark.slow
def test_finetune_recipe(tmp_path: Path):
    out = run_example("finetune_recipe.py", "--fast", "--log-dir", str(tmp_path))
    assert "suggested LR" in out and "the LR of the lowest smoothed loss / 10" in out
    assert "epoch 1: unfroze layer4" in out and "val_ema/accuracy" in out
    sweep = event_run(tmp_path / "lr_find")
    assert "lr_find/curve" in sweep.Tags()["images"]
    assert {"lr_find/lr", "lr_find/loss", "lr_find/smoothed_loss"} <= set(sweep.Tags()["scalars"])
    trained = float(out.split("trained with LR ")[1].split(":")[0])
    events = event_run(tmp_path)
    assert "lr/fc" in events.Tags()["scalars"]
    assert "accuracy" in event_run(tmp_path / "validation").Tags()["scalars"]
    assert "accuracy" in event_run(tmp_path / "validation_ema").Tags()["scalars"]
    assert "accuracy/step" in event_run(tmp_path / "train").Tags()["scalars"]  # MixUpCutMix's train/accuracy
    # The first epoch's head-only training ran at the suggestion (the head's group is the reference group).
    assert events.Scalars("lr/fc")[0].value == pytest.approx(trained, rel=1e-2)
    assert (tmp_path / "checkpoints" / "best.safetensors").exists()  # the EMA weights, monitored on val_ema
