"""Smoke tests: every core example runs with tiny settings and writes what it promises."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.paths import EXAMPLES
from helpers.processes import run_distributed, run_example
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def scalar_tags(run: Path) -> set[str]:
    """The run's scalar tags: its own as they are, a split's as `<sub-run>/<tag>` (`validation/loss`)."""
    tags = set()
    for folder in sorted({f.parent for f in run.rglob("events.out.tfevents.*")}):
        assert len(list(folder.glob("events.out.tfevents.*"))) == 1, folder  # one writer per folder
        accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0})
        accumulator.Reload()
        prefix = "" if folder == run else f"{folder.relative_to(run).as_posix()}/"
        tags |= {prefix + tag for tag in accumulator.Tags()["scalars"]}
    return tags


def test_quickstart(tmp_path: Path):
    out = run_example("quickstart.py", "--fast", "--log-dir", str(tmp_path / "run"))
    assert "best val/accuracy" in out
    assert {"train/loss/step", "validation/loss", "validation/accuracy", "lr/group0"} <= scalar_tags(tmp_path / "run")


def test_custom_loss(tmp_path: Path):
    out = run_example("custom_loss.py", "--fast", "--log-dir", str(tmp_path))
    assert "function: val/loss" in out and "module: val/loss" in out
    for name in ("function", "module"):
        assert "validation/loss" in scalar_tags(tmp_path / name)


def test_mixed_precision_bf16_on_cpu(tmp_path: Path):
    out = run_example("mixed_precision.py", "--fast", "--log-dir", str(tmp_path))
    assert "bf16 on cpu" in out and "weights dtype torch.float32" in out
    assert "validation/accuracy" in scalar_tags(tmp_path / "bf16")


def test_custom_callback_logs_activations_and_removes_its_hooks(tmp_path: Path):
    out = run_example("custom_callback.py", "--fast", "--log-dir", str(tmp_path / "run"))
    assert "hooks left on the model: 0" in out
    tags = scalar_tags(tmp_path / "run")
    assert "activations/conv1/mean" in tags and "activations/layer4.1.relu/std" in tags


def test_multi_gpu_example_on_two_cpu_processes(tmp_path: Path):
    result = run_distributed(EXAMPLES / "multi_gpu.py", "--fast", "--log-dir", str(tmp_path / "run"))
    assert "2 process(es) on cpu" in result.stdout
    assert "validation/accuracy" in scalar_tags(tmp_path / "run")


@pytest.mark.slow
def test_image_folder_example_with_a_demo_tree(tmp_path: Path):
    out = run_example(
        "image_folder.py",
        "--make-demo",
        str(tmp_path / "demo"),
        "--data",
        str(tmp_path / "demo"),
        "--epochs",
        "1",
        "--image-size",
        "32",
        "--log-dir",
        str(tmp_path / "run"),
    )
    assert "192 train / 48 val images" in out and "first predictions" in out
    assert "validation/accuracy" in scalar_tags(tmp_path / "run")
