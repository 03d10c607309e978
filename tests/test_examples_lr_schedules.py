"""Smoke test of examples/lr_schedules.py: the LR curves it logs have the shapes it promises.

The event files are read back with TensorBoard's own EventAccumulator. `lr/group0` is
logged at every optimizer step (the LR that step trained with) and again at each epoch
end; the first value at a step is the step's own.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from helpers.processes import run_example
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.optim.lr_scheduler import ReduceLROnPlateau

LR = 0.1


def load(run: Path) -> EventAccumulator:
    assert len(list(run.glob("events.out.tfevents.*"))) == 1  # one event file per run
    return EventAccumulator(str(run), size_guidance={"scalars": 0}).Reload()


def lr_per_step(events: EventAccumulator) -> list[float]:
    """The LR of optimizer steps 1, 2, ... in order."""
    first: dict[int, float] = {}
    for event in events.Scalars("lr/group0"):
        first.setdefault(event.step, event.value)
    assert sorted(first) == list(range(1, len(first) + 1)), "an LR at every optimizer step"
    return [first[step] for step in sorted(first)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    log_dir = tmp_path_factory.mktemp("lr_schedules")
    out = run_example("lr_schedules.py", "--fast", "--lr", str(LR), "--log-dir", str(log_dir), timeout=600)
    return log_dir, out


@pytest.fixture(scope="module")
def shape(runs: tuple[Path, str]) -> tuple[int, int, list[int]]:
    """(epochs, optimizer steps per epoch, MultiStepLR milestones), as the example prints them."""
    found = re.search(r"(\d+) epochs of (\d+) steps each; MultiStepLR milestones \[([\d, ]+)\]", runs[1])
    assert found, runs[1]
    return int(found[1]), int(found[2]), [int(m) for m in found[3].split(",")]


@pytest.mark.slow
def test_every_schedule_is_a_run_with_its_metrics(runs: tuple[Path, str]):
    log_dir, out = runs
    for name in ("onecycle", "step", "plateau", "custom"):
        assert f"{name:>8}: val/loss" in out
        assert "lr/group0" in load(log_dir / name).Tags()["scalars"]
        assert "loss/step" in load(log_dir / name / "train").Tags()["scalars"]
        assert {"loss", "accuracy"} <= set(load(log_dir / name / "validation").Tags()["scalars"])
    assert f"tensorboard --logdir {log_dir}" in out


@pytest.mark.slow
def test_onecycle_rises_to_its_peak_then_falls(runs: tuple[Path, str], shape: tuple[int, int, list[int]]):
    epochs, steps, _ = shape
    lrs = lr_per_step(load(runs[0] / "onecycle"))
    assert len(lrs) == epochs * steps
    peak = lrs.index(max(lrs))
    assert 0 < peak < len(lrs) - 1
    assert all(a < b for a, b in zip(lrs[:peak], lrs[1 : peak + 1], strict=True))  # warms up
    assert all(a > b for a, b in zip(lrs[peak:-1], lrs[peak + 1 :], strict=True))  # anneals
    assert 0.9 * LR <= max(lrs) <= LR
    assert lrs[0] == pytest.approx(LR / 25, rel=1e-3)  # OneCycleLR's default div_factor
    assert lrs[-1] < lrs[0] / 10


@pytest.mark.slow
def test_multistep_is_constant_per_epoch_and_drops_at_each_milestone(
    runs: tuple[Path, str], shape: tuple[int, int, list[int]]
):
    epochs, steps, milestones = shape
    lrs = lr_per_step(load(runs[0] / "step"))
    assert len(lrs) == epochs * steps
    for epoch in range(epochs):
        expected = LR * 0.1 ** sum(epoch >= m for m in milestones)
        assert lrs[epoch * steps : (epoch + 1) * steps] == pytest.approx([expected] * steps, rel=1e-6), epoch
    assert len(set(lrs)) == len(milestones) + 1


@pytest.mark.slow
def test_plateau_halves_the_lr_after_val_loss_stops_improving(
    runs: tuple[Path, str], shape: tuple[int, int, list[int]]
):
    epochs, steps, _ = shape
    events = load(runs[0] / "plateau")
    lrs = lr_per_step(events)
    per_epoch = lrs[::steps]
    for epoch in range(epochs):  # only an epoch end changes it
        assert lrs[epoch * steps : (epoch + 1) * steps] == pytest.approx([per_epoch[epoch]] * steps, rel=1e-6)
    val_loss = [event.value for event in load(runs[0] / "plateau" / "validation").Scalars("loss")]
    assert len(val_loss) == epochs
    # Replay the logged val/loss through the example's ReduceLROnPlateau settings: the
    # LR of each next epoch must be what the scheduler decides from the losses so far.
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR)
    reference = ReduceLROnPlateau(optimizer, mode="min", factor=0.5, patience=1, threshold=0.02)
    for epoch in range(epochs - 1):
        reference.step(val_loss[epoch])
        assert per_epoch[epoch + 1] == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-6), (epoch, val_loss)
    assert per_epoch[0] == pytest.approx(LR)
    assert min(per_epoch) < LR, f"no plateau in {val_loss}: the run never tested a drop"


@pytest.mark.slow
def test_custom_function_values_are_the_function(runs: tuple[Path, str], shape: tuple[int, int, list[int]]):
    epochs, steps, _ = shape
    lrs = lr_per_step(load(runs[0] / "custom"))
    total = epochs * steps

    def warmup_cosine(step: int) -> float:  # the example's function, with warmup = one epoch
        if step < steps:
            return LR * (step + 1) / steps
        return LR * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - steps) / max(1, total - steps))))

    # Optimizer step k (from 1) trains with the function's value after k - 1 steps.
    assert lrs == pytest.approx([warmup_cosine(k - 1) for k in range(1, total + 1)], rel=1e-6)
    assert lrs[steps - 1] == pytest.approx(LR)  # warmup ends at the base LR
