"""Exact resume in one process: stop anywhere, resume, and get bit-identical final weights."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.checkpoints import StepLRCallback, StopAtStep, assert_identical, loaders, make_trainer, weights

from callbacks_kit import EarlyStopping, ModelCheckpoint, Trainer

EPOCHS = 3  # 8 batches of 8 per epoch: 24 optimizer steps


def _reference(tmp_path, accumulation: int = 1) -> Trainer:
    trainer = make_trainer([StepLRCallback(), ModelCheckpoint(tmp_path / "ref")], accumulation=accumulation)
    trainer.log_every_n_steps = 3
    trainer.fit(*loaders(), epochs=EPOCHS)
    return trainer


def _metrics(trainer: Trainer) -> dict[str, float]:
    return {k: v for k, v in trainer.state.metrics.items() if not k.startswith("perf/")}


def _interrupted_then_resumed(tmp_path, stop_at: int, accumulation: int = 1, resume_from: str = "last"):
    ckpt = tmp_path / "ckpt"
    first = make_trainer([StepLRCallback(), ModelCheckpoint(ckpt), StopAtStep(stop_at)], accumulation=accumulation)
    first.log_every_n_steps = 3
    first.fit(*loaders(), epochs=EPOCHS)
    assert first.state.global_step == stop_at
    # A different process would start from other RNG states: make that so here too.
    second = make_trainer([StepLRCallback(), ModelCheckpoint(ckpt)], seed=123, accumulation=accumulation)
    second.log_every_n_steps = 3
    torch.manual_seed(999)
    second.fit(*loaders(), epochs=EPOCHS, resume_from=resume_from)
    return second


@pytest.mark.parametrize(
    "stop_at",
    [3, 8, 20],  # mid first epoch; after an epoch's last batch, before its validation; mid last epoch
)
def test_stop_mid_epoch_and_resume_is_bit_identical(tmp_path, stop_at):
    resumed = _interrupted_then_resumed(tmp_path, stop_at)
    reference = _reference(tmp_path)
    assert resumed.state.global_step == EPOCHS * 8
    assert_identical(weights(resumed), weights(reference))
    # train/epoch_loss and train/loss of the resumed epoch too: the running sums were saved.
    assert _metrics(resumed) == _metrics(reference) and "train/loss" in _metrics(reference)


def test_resume_with_gradient_accumulation_is_bit_identical(tmp_path):
    resumed = _interrupted_then_resumed(tmp_path, stop_at=5, accumulation=2)  # 4 steps per epoch
    assert resumed.state.global_step == EPOCHS * 4
    assert_identical(weights(resumed), weights(_reference(tmp_path, accumulation=2)))


def test_resume_from_an_epoch_end_checkpoint_by_path(tmp_path):
    ckpt = tmp_path / "ckpt"
    make_trainer([StepLRCallback(), ModelCheckpoint(ckpt, save_top_k=0)], seed=0).fit(*loaders(), epochs=1)
    folder = ckpt / "epoch=0001-step=00000008"
    assert json.loads((ckpt / "last.json").read_text())["checkpoint"] == folder.name
    resumed = make_trainer([StepLRCallback(), ModelCheckpoint(tmp_path / "other")], seed=5)
    resumed.fit(*loaders(), epochs=EPOCHS, resume_from=str(folder))
    assert_identical(weights(resumed), weights(_reference(tmp_path)))
    assert folder.is_dir()  # a run resumed into another folder never prunes the one it came from
    assert json.loads((tmp_path / "other" / "last.json").read_text())["checkpoint"] == "epoch=0003-step=00000024"


def test_resume_restores_trainer_and_callback_states(tmp_path):
    ckpt = tmp_path / "ckpt"
    stopper = EarlyStopping("val/accuracy", patience=50, mode="max")
    first = make_trainer([StepLRCallback(), stopper, ModelCheckpoint(ckpt, monitor="val/loss"), StopAtStep(19)])
    first.fit(*loaders(), epochs=EPOCHS)
    saved_stopper, saved_state = stopper.state_dict(), first.state.state_dict()
    scheduler = StepLRCallback()
    checkpoint = ModelCheckpoint(ckpt, monitor="val/loss")
    second = make_trainer([scheduler, EarlyStopping("val/accuracy", patience=50, mode="max"), checkpoint])
    second.fit(*loaders(), epochs=2, resume_from="last")  # already past epoch 2: nothing to train
    assert second.callbacks.find(EarlyStopping)[0].state_dict() == saved_stopper
    assert scheduler.scheduler.last_epoch == 19
    assert second.optimizer.param_groups[0]["lr"] == first.optimizer.param_groups[0]["lr"]
    for key in ("global_step", "samples_seen", "metrics"):
        assert second.state.state_dict()[key] == saved_state[key]
    assert (second.state.epoch, second.state.batch_idx) == (2, 3)
    assert checkpoint.best_k == first.callbacks.find(ModelCheckpoint)[0].best_k


def test_resume_last_with_no_checkpoint_yet_starts_fresh(tmp_path, capsys):
    trainer = make_trainer([ModelCheckpoint(tmp_path / "empty")])
    trainer.fit(*loaders(), epochs=1, resume_from="last")
    assert trainer.state.global_step == 8
    assert "no checkpoint yet" in capsys.readouterr().out


def test_resuming_a_finished_run_trains_no_more(tmp_path, capsys):
    make_trainer([ModelCheckpoint(tmp_path)]).fit(*loaders(), epochs=1)
    again = make_trainer([ModelCheckpoint(tmp_path)])
    again.fit(*loaders(), epochs=1, resume_from="last")
    assert again.state.global_step == 8 and "already has 1 epochs" in capsys.readouterr().out
