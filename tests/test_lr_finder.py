"""LRFinder: the sweep, its smoothing and suggestion, the exact restore, TensorBoard output, bad input."""

from __future__ import annotations

import copy
import math
import random

import numpy as np
import pytest
import torch
from helpers.checkpoints import assert_identical, data, dropout_mlp, weights
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter

from callbacks_kit import Trainer
from callbacks_kit.errors import ScheduleError, TrainerError
from callbacks_kit.lr_finder import RULE, LRFinder, LRFinderResult, range_test


class RecordingTrainer(Trainer):
    """Notes each param group's LR and whether the frozen layer moved, at every forward."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seen_lrs: list[list[float]] = []
        self.frozen_moved: list[bool] = []
        self.frozen_start: torch.Tensor | None = None

    def forward(self, inputs, targets, model=None):
        self.seen_lrs.append([g["lr"] for g in self.optimizer.param_groups])
        if self.frozen_start is not None:
            self.frozen_moved.append(not torch.equal(self.unwrapped_model[0].weight, self.frozen_start))
        return super().forward(inputs, targets, model)


def bn_dropout_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 3))


def grouped_trainer(model: nn.Module, cls: type[Trainer] = Trainer) -> Trainer:
    groups = [{"params": model[0].parameters(), "lr": 1e-3}, {"params": model[4].parameters(), "lr": 1e-2}]
    groups.append({"params": model[1].parameters(), "lr": 1e-2})
    return cls(model, torch.optim.AdamW(groups, weight_decay=0.05), nn.CrossEntropyLoss(), progress_bar=False, seed=0)


def train_loader() -> DataLoader:
    return DataLoader(data(64), batch_size=8, shuffle=True)


def test_sweep_scales_every_group_in_proportion_and_frozen_layers_stay_frozen():
    model = bn_dropout_model()
    trainer = grouped_trainer(model, RecordingTrainer)
    model[0].requires_grad_(False)  # a frozen stage (its group is still in the optimizer)
    trainer.frozen_start = model[0].weight.detach().clone()
    result = LRFinder(min_lr=1e-5, max_lr=1.0, steps=20).run(trainer, train_loader())
    assert result.base_lr == 1e-2 and len(result.lrs) == len(trainer.seen_lrs)
    for lr, (backbone, head, norm) in zip(result.lrs, trainer.seen_lrs, strict=True):
        assert head == norm == lr and backbone == pytest.approx(lr / 10, rel=1e-12)
    assert result.lrs[0] == 1e-5 and math.isclose(result.lrs[1] / result.lrs[0], (1.0 / 1e-5) ** (1 / 19))
    assert not any(trainer.frozen_moved)
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [1e-3, 1e-2, 1e-2]  # restored


def test_smoothing_divergence_stop_and_suggestion_follow_the_stated_rules():
    trainer = grouped_trainer(bn_dropout_model())
    result = LRFinder(min_lr=1e-4, max_lr=1e4, steps=60).run(trainer, train_loader())
    # fastai's debiased EMA of the losses, beta 0.98.
    average, expected = 0.0, []
    for i, loss in enumerate(result.losses):
        average = 0.98 * average + 0.02 * loss
        expected.append(average / (1 - 0.98 ** (i + 1)))
    assert result.smoothed == pytest.approx(expected, rel=1e-12)
    # LRs up to 1e4 with AdamW diverge: the sweep stops at the first smoothed loss above 4x the best.
    assert result.diverged and len(result.lrs) < 60
    assert result.smoothed[-1] > 4 * min(result.smoothed[:-1]) or not math.isfinite(result.smoothed[-1])
    assert all(s <= 4 * min(result.smoothed[: i + 1]) for i, s in enumerate(result.smoothed[:-1]))
    lowest = min(range(len(result.smoothed) - 1), key=result.smoothed.__getitem__)
    assert result.suggestion == result.lrs[lowest] / 10 and result.rule == RULE
    assert "suggested LR" in result.summary() and "diverged" in result.summary()


def test_the_test_restores_model_optimizer_scheduler_and_rng_bit_for_bit():
    def trained_trainer() -> tuple[Trainer, torch.optim.lr_scheduler.StepLR]:
        torch.manual_seed(0)
        model = dropout_mlp()
        trainer = Trainer(model, torch.optim.AdamW(model.parameters(), lr=0.01), nn.CrossEntropyLoss(),
                          progress_bar=False, seed=0)  # fmt: skip
        trainer.fit(train_loader(), epochs=1)  # the optimizer has moments, the model has moved
        scheduler = torch.optim.lr_scheduler.StepLR(trainer.optimizer, step_size=2, gamma=0.5)
        return trainer, scheduler

    trainer, scheduler = trained_trainer()
    before = weights(trainer)
    optimizer_before = copy.deepcopy(trainer.optimizer.state_dict())
    scheduler_before = scheduler.state_dict()
    rng_before = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    LRFinder(min_lr=1e-5, max_lr=10.0, steps=15).run(trainer, train_loader(), schedulers=[scheduler])
    assert_identical(weights(trainer), before)
    after = trainer.optimizer.state_dict()
    assert after["param_groups"] == optimizer_before["param_groups"]
    for key, state in optimizer_before["state"].items():
        assert_identical(after["state"][key], state)
    assert scheduler.state_dict() == scheduler_before
    assert torch.equal(torch.get_rng_state(), rng_before[0]) and random.getstate() == rng_before[1]
    assert np.array_equal(np.random.get_state()[1], rng_before[2])
    assert all(p.grad is None for p in trainer.model.parameters()) and trainer.model.training

    # The strongest check: training on after the test is what it would have been without it.
    trainer.fit(train_loader(), epochs=2)
    untouched, _ = trained_trainer()
    untouched.fit(train_loader(), epochs=2)
    assert_identical(weights(trainer), weights(untouched))


def test_the_curve_goes_to_tensorboard_as_scalars_image_and_text(tmp_path):
    result = LRFinder(min_lr=1e-4, max_lr=1.0, steps=12).run(grouped_trainer(bn_dropout_model()), train_loader())
    writer = SummaryWriter(str(tmp_path))
    result.log(writer)
    writer.close()
    events = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0, "images": 0, "tensors": 0}).Reload()
    assert {"lr_find/lr", "lr_find/loss", "lr_find/smoothed_loss"} <= set(events.Tags()["scalars"])
    assert [e.value for e in events.Scalars("lr_find/loss")] == pytest.approx(result.losses, rel=1e-6)
    image = events.Images("lr_find/curve")[0]
    assert image.width == 640 and image.height == 400
    text = events.Tensors("lr_find/suggestion/text_summary")[0].tensor_proto.string_val[0].decode()
    assert f"suggested LR {result.suggestion:.3g}" in text and RULE in text


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_lr": 1.0, "max_lr": 1e-3}, "min_lr 1 is not below max_lr 0.001"),
        ({"min_lr": 0.1, "max_lr": 0.1}, "is not below max_lr"),
        ({"min_lr": 0.0}, "positive finite"),
        ({"max_lr": float("inf")}, "positive finite"),
        ({"steps": 2}, "steps must be an int >= 5"),
        ({"beta": 1.0}, "beta must be in"),
        ({"diverge": 1.0}, "diverge must be above 1"),
    ],
)
def test_bad_lr_finder_options_are_refused(kwargs, message):
    with pytest.raises(ScheduleError, match=message):
        LRFinder(**kwargs)


def test_gradient_accumulation_does_not_change_the_sweep():
    def sweep(accumulation: int) -> list[float]:
        model = bn_dropout_model()
        trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(),
                          gradient_accumulation_steps=accumulation, progress_bar=False, seed=0)  # fmt: skip
        return LRFinder(min_lr=1e-3, max_lr=10.0, steps=8).run(trainer, train_loader()).losses

    # Each sweep step is one optimizer step on one whole batch, with or without accumulation.
    assert sweep(2) == sweep(1)


def test_range_test_freezes_the_named_modules_for_the_sweep_only_and_writes_the_run(tmp_path):
    model = bn_dropout_model()
    trainer = grouped_trainer(model, RecordingTrainer)
    trainer.frozen_start = model[0].weight.detach().clone()
    result = range_test(LRFinder(min_lr=1e-4, max_lr=1.0, steps=12), trainer, train_loader(), ["0"], str(tmp_path))
    assert trainer.frozen_moved and not any(trainer.frozen_moved)
    assert all(p.requires_grad for p in model.parameters())  # unfrozen afterwards
    events = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0}).Reload()
    assert [e.value for e in events.Scalars("lr_find/loss")] == pytest.approx(result.losses, rel=1e-6)


def test_apply_sets_the_suggestion_in_the_groups_ratios():
    trainer = grouped_trainer(bn_dropout_model())
    result = LRFinder(min_lr=1e-4, max_lr=1.0, steps=12).run(trainer, train_loader())
    result.apply(trainer.optimizer)
    lrs = [g["lr"] for g in trainer.optimizer.param_groups]
    assert lrs == pytest.approx([result.suggestion / 10, result.suggestion, result.suggestion], rel=1e-12)
    result.suggestion = None
    with pytest.raises(ScheduleError, match="no suggestion"):
        result.apply(trainer.optimizer)


def test_a_fully_frozen_model_and_one_sample_batches_are_refused_before_the_sweep():
    model = bn_dropout_model()
    trainer = grouped_trainer(model)
    model.requires_grad_(False)
    with pytest.raises(TrainerError, match=r"every parameter of the optimizer is frozen.*finetune.unfreeze"):
        LRFinder(steps=5).run(trainer, train_loader())
    model.requires_grad_(True)
    one = DataLoader(data(1), batch_size=8)  # BatchNorm1d sees one value per channel in a batch of one
    with pytest.raises(TrainerError, match=r"train_loader holds 1 sample in all.*BatchNorm layer 1 sees a single"):
        LRFinder(steps=5).run(trainer, one)
    assert LRFinder(steps=5).run(trainer, DataLoader(data(16), batch_size=2)).lrs  # two samples a batch: fine


def noisy_start_curve(steps: int = 100) -> tuple[list[float], list[float], list[float]]:
    """A sweep's curve from 1e-7 to 10: noise at the lowest LRs, a fall from 1e-4 to 1e-1, divergence past 1."""
    lrs = LRFinder(min_lr=1e-7, max_lr=10.0, steps=steps).lrs()
    generator = torch.Generator().manual_seed(0)
    losses = []
    for i, lr in enumerate(lrs):
        fall = 1.5 / (1 + math.exp(-2.5 * (math.log10(lr) + 2.5)))  # steepest at 10^-2.5
        noise = 0.4 * float(torch.randn((), generator=generator)) if i < 8 else 0.0
        rise = 50 * max(0.0, math.log10(lr)) ** 2
        losses.append(2.0 - fall + noise + rise)
    losses[1] = 0.6  # one very lucky early batch
    average, smoothed = 0.0, []
    for i, loss in enumerate(losses):  # LRFinder's debiased EMA
        average = 0.98 * average + 0.02 * loss
        smoothed.append(average / (1 - 0.98 ** (i + 1)))
    return lrs, losses, smoothed


def test_the_steepest_descent_ignores_the_first_noisy_steps():
    lrs, losses, smoothed = noisy_start_curve()
    result = LRFinderResult.from_curve(lrs, losses, smoothed, base_lr=1e-3, diverged=False, planned_steps=100)
    lowest = min(range(len(smoothed)), key=smoothed.__getitem__)
    assert result.suggestion == lrs[lowest] / 10 and 1e-2 < lrs[lowest] < 10  # the rule: past the fall, before the rise
    assert result.steepest is not None and 1e-4 < result.steepest < lrs[lowest]  # on the fall, not at 1e-7
    assert f"steepest descent at {result.steepest:.3g}" in result.summary()
    # Before the first tenth was left out, the lucky batch at step 1 was the "steepest descent".
    logs = [math.log10(lr) for lr in lrs]
    slopes = {i: (smoothed[i + 1] - smoothed[i - 1]) / (logs[i + 1] - logs[i - 1]) for i in range(1, len(lrs) - 1)}
    assert lrs[min(slopes, key=slopes.__getitem__)] < 1e-6


def test_no_steepest_descent_after_the_noisy_start_is_said_plainly():
    lrs, _, _ = noisy_start_curve(20)
    smoothed = [1.0 - 0.01 * i if i < 2 else 2.0 + i for i in range(20)]  # lowest at step 1, then it only rises
    result = LRFinderResult.from_curve(lrs, smoothed, smoothed, base_lr=1e-3, diverged=False, planned_steps=20)
    assert result.steepest is None and "steepest descent not found after the first steps" in result.summary()
