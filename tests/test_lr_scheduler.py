"""LearningRateScheduler: the LRs it sets equal PyTorch's own schedulers driven by hand, step by step."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers.tiny import tiny_classification_data, tiny_mlp
from torch import nn
from torch.optim import lr_scheduler as sched
from torch.utils.data import DataLoader

from callbacks_kit import Callback, LearningRateScheduler, TensorBoardLogger, Trainer
from callbacks_kit.checkpoint.codec import tag_json, untag_json
from callbacks_kit.errors import ScheduleError

EPOCHS, BATCHES = 3, 8  # 64 samples in batches of 8


class LRProbe(Callback):
    """The LR of every group for each batch, and the validation loss of each epoch."""

    order = 10

    def __init__(self) -> None:
        self.lrs: list[list[float]] = []
        self.val_losses: list[float] = []

    def on_train_batch_start(self, trainer: Trainer) -> None:
        self.lrs.append([g["lr"] for g in trainer.optimizer.param_groups])

    def on_epoch_end(self, trainer: Trainer) -> None:
        if "val/loss" in trainer.state.metrics:
            self.val_losses.append(trainer.state.metrics["val/loss"])


def two_groups(params_like: nn.Module | None = None) -> torch.optim.Optimizer:
    """SGD with momentum over two named groups with different LRs."""
    model = params_like if params_like is not None else tiny_mlp()
    return torch.optim.SGD(
        [
            {"params": model[0].parameters(), "lr": 0.1, "name": "body"},
            {"params": model[2].parameters(), "lr": 0.05, "name": "head"},
        ],
        lr=0.1,
        momentum=0.9,
    )


def train(
    callback: LearningRateScheduler,
    epochs: int = EPOCHS,
    val: bool = True,
    optimizer=None,
    model=None,
    callbacks_extra=(),
    resume_from=None,
    **kwargs,
):
    model = model if model is not None else tiny_mlp()
    optimizer = optimizer if optimizer is not None else two_groups(model)
    probe = LRProbe()
    trainer = Trainer(
        model,
        optimizer,
        nn.CrossEntropyLoss(),
        callbacks=[callback, probe, *callbacks_extra],
        progress_bar=False,
        cpu=True,
        **kwargs,
    )
    train_loader = DataLoader(tiny_classification_data(64), batch_size=8, shuffle=True)
    val_loader = DataLoader(tiny_classification_data(16, seed=1), batch_size=8) if val else None
    trainer.fit(train_loader, val_loader, epochs=epochs, resume_from=resume_from)
    return probe, trainer


def by_hand(make, steps: int, per_epoch: int = 1, metrics: list[float] | None = None) -> list[list[float]]:
    """The LRs PyTorch's scheduler gives a twin optimizer, stepped after each optimizer step."""
    optimizer = two_groups()
    scheduler = make(optimizer)
    lrs = []
    for step in range(steps):
        lrs += [[g["lr"] for g in optimizer.param_groups]] * per_epoch
        optimizer.step()
        scheduler.step(*([metrics[step]] if metrics else []))
    return lrs


PER_STEP = {
    "CosineAnnealingLR": lambda opt: sched.CosineAnnealingLR(opt, T_max=10, eta_min=1e-3),
    "OneCycleLR": lambda opt: sched.OneCycleLR(opt, max_lr=[0.4, 0.2], total_steps=EPOCHS * BATCHES),
    "CyclicLR": lambda opt: sched.CyclicLR(opt, base_lr=0.01, max_lr=[0.2, 0.1], step_size_up=5, mode="triangular2"),
    "SequentialLR": lambda opt: sched.SequentialLR(
        opt, [sched.LinearLR(opt, 0.1, total_iters=4), sched.ExponentialLR(opt, 0.9)], milestones=[4]
    ),
    "ChainedScheduler": lambda opt: sched.ChainedScheduler(
        [sched.ConstantLR(opt, 0.5, total_iters=6), sched.ExponentialLR(opt, 0.95)]
    ),
    "CosineAnnealingWarmRestarts": lambda opt: sched.CosineAnnealingWarmRestarts(opt, T_0=5),
}
PER_EPOCH = {
    "StepLR": lambda opt: sched.StepLR(opt, step_size=1, gamma=0.5),
    "LambdaLR per group": lambda opt: sched.LambdaLR(opt, [lambda e: 0.5**e, lambda e: 1 / (1 + e)]),
    "MultiStepLR": lambda opt: sched.MultiStepLR(opt, milestones=[1, 2], gamma=0.3),
}


@pytest.mark.parametrize("name", PER_STEP)
def test_per_step_schedules_equal_pytorch_step_by_step(name):
    probe, _ = train(LearningRateScheduler(PER_STEP[name], interval="step"), val=False)
    assert probe.lrs == by_hand(PER_STEP[name], EPOCHS * BATCHES)


@pytest.mark.parametrize("name", PER_EPOCH)
def test_per_epoch_schedules_equal_pytorch_epoch_by_epoch(name):
    probe, _ = train(LearningRateScheduler(PER_EPOCH[name], interval="epoch"), val=False)
    assert probe.lrs == by_hand(PER_EPOCH[name], EPOCHS, per_epoch=BATCHES)


def test_a_scheduler_instance_built_before_the_trainer():
    model = tiny_mlp()
    optimizer = two_groups(model)
    probe, _ = train(
        LearningRateScheduler(sched.StepLR(optimizer, 1, 0.5)), model=model, optimizer=optimizer, val=False
    )
    assert probe.lrs == by_hand(PER_EPOCH["StepLR"], EPOCHS, per_epoch=BATCHES)


def test_reduce_on_plateau_reads_the_monitored_metric():
    # An improvement must beat the best by 10: after the first epoch, every epoch cuts the LR.
    def make(opt):
        return sched.ReduceLROnPlateau(opt, factor=0.5, patience=0, threshold=10, threshold_mode="abs")

    probe, _ = train(LearningRateScheduler(make, monitor="val/loss"), epochs=4)
    assert probe.lrs == by_hand(make, 4, per_epoch=BATCHES, metrics=probe.val_losses)
    assert probe.lrs[-1] == [0.1 / 4, 0.05 / 4]


def test_plateau_without_validation_data_fails_before_training():
    model = tiny_mlp()
    optimizer = two_groups(model)
    with pytest.raises(ScheduleError, match="monitors 'val/loss' but fit\\(\\) got no val_loader"):
        train(
            LearningRateScheduler(lambda opt: sched.ReduceLROnPlateau(opt)), val=False, optimizer=optimizer, model=model
        )
    assert not optimizer.state  # no optimizer step was taken


def test_plateau_on_a_missing_metric_lists_the_metrics_that_exist():
    with pytest.raises(ScheduleError, match="'val/acc', which is not among the metrics: .*val/loss"):
        train(LearningRateScheduler(lambda opt: sched.ReduceLROnPlateau(opt), monitor="val/acc"))


def test_gradient_accumulation_counts_optimizer_steps():
    steps = EPOCHS * BATCHES // 2

    def factory(opt, steps_per_epoch):
        assert steps_per_epoch == BATCHES // 2
        return sched.OneCycleLR(opt, max_lr=[0.4, 0.2], total_steps=steps)

    probe, trainer = train(LearningRateScheduler(factory, interval="step"), val=False, gradient_accumulation_steps=2)
    assert trainer.state.global_step == steps
    reference = by_hand(lambda opt: sched.OneCycleLR(opt, max_lr=[0.4, 0.2], total_steps=steps), steps)
    assert probe.lrs == [lrs for lrs in reference for _ in range(2)]


def test_a_step_skipped_by_the_scaler_does_not_advance_the_schedule():
    skipped = {3, 4, 10}

    class FakeOverflow(Callback):
        order = -10  # marks the step before the scheduler looks at it

        def on_train_batch_end(self, trainer: Trainer) -> None:
            # What the trainer sets when the fp16 scaler skipped the step (tests/test_cuda_paths.py runs a real one).
            trainer.state.step_skipped = trainer.state.batch_idx + BATCHES * trainer.state.epoch in skipped

    model = tiny_mlp()
    probe = LRProbe()
    trainer = Trainer(
        model,
        two_groups(model),
        nn.CrossEntropyLoss(),
        callbacks=[LearningRateScheduler(PER_STEP["CosineAnnealingLR"], interval="step"), FakeOverflow(), probe],
        progress_bar=False,
        cpu=True,
    )
    trainer.fit(DataLoader(tiny_classification_data(64), batch_size=8), epochs=2)
    reference = by_hand(PER_STEP["CosineAnnealingLR"], 2 * BATCHES)
    expected, position = [], 0
    for batch in range(2 * BATCHES):
        expected.append(reference[position])
        position += batch not in skipped
    assert probe.lrs == expected


def test_lr_at_a_classic_step_decay_function():
    def adjust_learning_rate(epoch: int, base_lr: float) -> float:
        return base_lr * 0.1 ** (epoch // 2)  # "divide by 10 every 30 epochs", every 2 here

    probe, _ = train(LearningRateScheduler(lr_at=adjust_learning_rate), epochs=5, val=False)
    per_epoch = [probe.lrs[e * BATCHES] for e in range(5)]
    assert per_epoch == [[0.1 * 0.1 ** (e // 2), 0.05 * 0.1 ** (e // 2)] for e in range(5)]


@pytest.mark.parametrize("bad", [None, "0.1", float("nan"), -1.0])
def test_lr_at_returning_a_non_number_fails_before_training(bad):
    model = tiny_mlp()
    optimizer = two_groups(model)
    with pytest.raises(ScheduleError, match=r"lr_at\(0, 0.1\) returned .*finite number"):
        train(LearningRateScheduler(lr_at=lambda step, lr: bad), optimizer=optimizer, model=model, val=False)
    assert not optimizer.state


def test_warmup_scales_any_schedule_linearly():
    warmup = 5
    probe, _ = train(LearningRateScheduler(PER_STEP["CosineAnnealingLR"], interval="step", warmup=warmup), val=False)
    reference = by_hand(PER_STEP["CosineAnnealingLR"], EPOCHS * BATCHES)
    for k, (got, want) in enumerate(zip(probe.lrs, reference, strict=True)):
        factor = min(1.0, (k + 1) / (warmup + 1))
        assert got == pytest.approx([lr * factor for lr in want], rel=1e-12)
    assert probe.lrs[warmup:] == reference[warmup:]


def test_warmup_in_steps_with_an_epoch_schedule_and_alone():
    probe, _ = train(LearningRateScheduler(PER_EPOCH["StepLR"], warmup=3, warmup_interval="step"), val=False)
    assert probe.lrs[:4] == [[0.1 * f, 0.05 * f] for f in (0.25, 0.5, 0.75, 1.0)]
    assert probe.lrs[BATCHES] == [0.05, 0.025]
    probe, _ = train(LearningRateScheduler(warmup=1, interval="epoch"), val=False)
    assert probe.lrs[0] == [0.05, 0.025] and probe.lrs[BATCHES] == [0.1, 0.05]


def test_lr_of_every_group_is_logged_to_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = tiny_mlp()
    probe = LRProbe()
    trainer = Trainer(
        model,
        two_groups(model),
        nn.CrossEntropyLoss(),
        callbacks=[
            LearningRateScheduler(PER_STEP["OneCycleLR"], interval="step"),
            TensorBoardLogger(str(tmp_path)),
            probe,
        ],
        progress_bar=False,
        cpu=True,
        log_every_n_steps=1,
    )
    trainer.fit(DataLoader(tiny_classification_data(64), batch_size=8), epochs=EPOCHS)
    events = EventAccumulator(str(tmp_path)).Reload()
    for index, name in enumerate(("body", "head")):
        logged = [(event.step, event.value) for event in events.Scalars(f"lr/{name}")]
        # One point per step, the LR that step trained with: no second point at an epoch's last step.
        assert [step for step, _ in logged] == list(range(1, EPOCHS * BATCHES + 1))
        for step, value in logged:
            assert value == pytest.approx(probe.lrs[step - 1][index], rel=1e-6)


def test_a_per_epoch_schedule_shows_each_epochs_lr_even_with_sparse_log_steps(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = tiny_mlp()
    scheduler = LearningRateScheduler(lambda opt: sched.StepLR(opt, step_size=1, gamma=0.5))
    trainer = Trainer(
        model,
        two_groups(model),
        nn.CrossEntropyLoss(),
        callbacks=[scheduler, TensorBoardLogger(str(tmp_path))],
        progress_bar=False,
        cpu=True,
        log_every_n_steps=50,  # never reached within an epoch of 8 steps
    )
    trainer.fit(DataLoader(tiny_classification_data(64), batch_size=8), epochs=EPOCHS)
    logged = [(e.step, e.value) for e in EventAccumulator(str(tmp_path)).Reload().Scalars("lr/body")]
    assert logged == [(8, pytest.approx(0.1)), (16, pytest.approx(0.05)), (24, pytest.approx(0.025))]


@pytest.mark.parametrize("name", ["OneCycleLR", "SequentialLR", "CyclicLR"])
def test_state_round_trips_through_json_and_continues_the_curve(name):
    make = PER_STEP[name]
    full, _ = train(LearningRateScheduler(make, interval="step", warmup=3), val=False, epochs=2)
    # First half: one epoch; save the optimizer (as a checkpoint would) and the callback state as JSON.
    first = LearningRateScheduler(make, interval="step", warmup=3)
    _, trainer = train(first, val=False, epochs=1)
    saved = json.loads(json.dumps(first.state_dict(), allow_nan=False))
    optimizer_state = trainer.optimizer.state_dict()
    # Second half: fresh model, optimizer and callback; the factory rebuilds the scheduler at fit start.
    model = tiny_mlp()
    optimizer = two_groups(model)
    optimizer.load_state_dict(optimizer_state)
    second = LearningRateScheduler(make, interval="step", warmup=3)
    second.load_state_dict(saved)
    resumed, _ = train(second, val=False, epochs=1, model=model, optimizer=optimizer)
    assert resumed.lrs == full.lrs[BATCHES:]


def test_json_encoding_of_awkward_values():
    state = {"best": math.inf, "worse": -math.inf, "t": torch.tensor([1.5, 2.0]), "pair": (0.9, 0.999), "fn": print}
    encoded = json.loads(json.dumps(tag_json(state), allow_nan=False))
    decoded = untag_json(encoded)
    assert decoded["best"] == math.inf and decoded["worse"] == -math.inf and decoded["pair"] == (0.9, 0.999)
    assert torch.equal(decoded["t"], torch.tensor([1.5, 2.0])) and "fn" not in decoded
    plateau = sched.ReduceLROnPlateau(two_groups())
    assert json.dumps(tag_json(plateau.state_dict()), allow_nan=False)


def test_bad_configurations_are_clear_errors():
    with pytest.raises(ScheduleError, match="either a scheduler or lr_at"):
        LearningRateScheduler(lambda opt: sched.StepLR(opt, 1), lr_at=lambda e, lr: lr)
    with pytest.raises(ScheduleError, match="nothing to schedule"):
        LearningRateScheduler()
    with pytest.raises(ScheduleError, match="interval must be 'epoch' or 'step', got 'batch'"):
        LearningRateScheduler(lambda opt: sched.StepLR(opt, 1), interval="batch")
    with pytest.raises(ScheduleError, match="warmup_interval must be 'epoch' or 'step', got 'batch'"):
        LearningRateScheduler(warmup=2, warmup_interval="batch")
    with pytest.raises(ScheduleError, match="once per epoch"):
        LearningRateScheduler(sched.ReduceLROnPlateau(two_groups()), interval="step")
    with pytest.raises(ScheduleError, match="a factory"):
        LearningRateScheduler(3)
    with pytest.raises(ScheduleError, match="another optimizer"):
        train(LearningRateScheduler(sched.StepLR(two_groups(), 1)), val=False)
    with pytest.raises(ScheduleError, match="returned a str"):
        train(LearningRateScheduler(lambda opt: "cosine"), val=False)


def test_one_cycle_shorter_than_the_fit_fails_at_fit_start():
    # 3 epochs of 8 steps need 24; a OneCycleLR built for 2 epochs would raise at step 17.
    factory = lambda opt: sched.OneCycleLR(opt, 0.1, epochs=2, steps_per_epoch=BATCHES)  # noqa: E731
    with pytest.raises(ScheduleError, match=r"built for 16 optimizer steps, but fit\(\) runs 24 .*epochs=3"):
        train(LearningRateScheduler(factory, interval="step"))


def test_one_cycle_with_an_empty_phase_fails_at_fit_start():
    # PyTorch's OneCycleLR divides by zero when pct_start * total_steps == 1.
    factory = lambda opt: sched.OneCycleLR(opt, 0.1, total_steps=4, pct_start=0.25)  # noqa: E731
    with pytest.raises(ScheduleError, match="divided by zero when it was built: a OneCycleLR with an empty phase"):
        train(LearningRateScheduler(factory, interval="step"), epochs=1)
    # Built fine, but with pct_start=1 its second phase is empty.
    factory = lambda opt: sched.OneCycleLR(opt, 0.1, total_steps=BATCHES, pct_start=1.0)  # noqa: E731
    with pytest.raises(ScheduleError, match="OneCycleLR over 8 optimizer steps has an empty phase"):
        train(LearningRateScheduler(factory, interval="step"), epochs=1)


def test_resuming_with_more_epochs_than_the_saved_one_cycle_is_explained(tmp_path):
    from callbacks_kit import ModelCheckpoint

    def factory(opt, steps_per_epoch):
        return sched.OneCycleLR(opt, 0.1, epochs=2, steps_per_epoch=steps_per_epoch)

    train(LearningRateScheduler(factory, interval="step"), epochs=2, callbacks_extra=[ModelCheckpoint(tmp_path)])
    with pytest.raises(ScheduleError, match=r"built for 16 optimizer steps, but fit\(\) runs 24.*resume with"):
        train(
            LearningRateScheduler(factory, interval="step"),
            epochs=3,
            callbacks_extra=[ModelCheckpoint(tmp_path)],
            resume_from="last",
        )


def test_the_former_name_is_a_deprecated_subclass_with_the_same_state_key():
    from callbacks_kit import LRScheduler
    from callbacks_kit.callbacks import LRScheduler as from_callbacks

    assert from_callbacks is LRScheduler and issubclass(LRScheduler, LearningRateScheduler)
    with pytest.warns(DeprecationWarning, match="LRScheduler was renamed LearningRateScheduler.*removed in 0.2.0"):
        old = LRScheduler(PER_EPOCH["StepLR"], warmup=2)
    # Checkpoints of 0.1.0 hold its state under "LRScheduler", whichever name built it.
    assert old.state_key == LearningRateScheduler(warmup=1).state_key == "LRScheduler"
    probe, trainer = train(old, val=False)
    assert trainer.callbacks.find(LearningRateScheduler) == [old]
    again, _ = train(LearningRateScheduler(PER_EPOCH["StepLR"], warmup=2), val=False)
    assert probe.lrs == again.lrs

    class Custom(LearningRateScheduler):
        pass

    assert Custom(warmup=1).state_key == Custom.__qualname__
