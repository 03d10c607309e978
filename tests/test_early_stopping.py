"""EarlyStopping and TerminateOnNaN: when they stop, what they say, and that state survives."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers.checkpoints import ScriptedScore, loaders, make_trainer, weights

from callbacks_kit import Callback, EarlyStopping, ModelCheckpoint, TerminateOnNaN, TrainerError
from callbacks_kit.callbacks import NonFiniteError
from callbacks_kit.norms import all_finite


def test_stops_after_patience_epochs_without_improvement(capsys):
    stopper = EarlyStopping("val/score", patience=2, mode="max", min_delta=0.05)
    trainer = make_trainer([ScriptedScore([0.5, 0.6, 0.62, 0.64, 0.9, 0.9]), stopper])
    trainer.fit(*loaders(), epochs=6)
    assert trainer.state.epoch == 4 and trainer.state.global_step == 32  # 0.62 and 0.64 are within min_delta
    assert stopper.state_dict() == {"best": 0.6, "best_epoch": 2, "wait": 2, "stopped": 4}
    assert "early stopping at epoch 4: val/score has not improved by more than 0.05 for 2 epoch(s)" in (
        capsys.readouterr().out
    )


def test_min_mode_and_nan_counts_as_no_improvement():
    stopper = EarlyStopping("val/score", patience=2)
    trainer = make_trainer([ScriptedScore([1.0, math.nan, 0.5, 0.6, 0.7]), stopper])
    trainer.fit(*loaders(), epochs=5)
    assert trainer.state.epoch == 5 and stopper.best == 0.5 and stopper.stopped_epoch == 5


def test_missing_monitor_lists_the_keys():
    trainer = make_trainer([EarlyStopping("val/acuracy", mode="max")])
    with pytest.raises(TrainerError, match=r"EarlyStopping monitors 'val/acuracy'.*Did you mean 'val/accuracy'"):
        trainer.fit(*loaders(), epochs=1)


def test_bad_options():
    with pytest.raises(TrainerError, match="patience"):
        EarlyStopping(patience=0)
    with pytest.raises(TrainerError, match="min_delta"):
        EarlyStopping(min_delta=-1)


def test_counters_survive_a_resume_and_a_stopped_run_stays_stopped(tmp_path, capsys):
    scores = [0.5, 0.4, 0.3, 0.3, 0.3, 0.3]
    stopper = EarlyStopping("val/score", patience=2, mode="max")
    make_trainer([ScriptedScore(scores), stopper, ModelCheckpoint(tmp_path, every_n_epochs=1)]).fit(*loaders(), 6)
    assert stopper.stopped_epoch == 3
    saved = json.loads((tmp_path / "epoch=0003-step=00000024" / "state.json").read_text())
    assert saved["callbacks"]["EarlyStopping"] == {"best": 0.5, "best_epoch": 1, "wait": 2, "stopped": 3}
    assert saved["trainer"]["should_stop"] is True
    again = EarlyStopping("val/score", patience=2, mode="max")
    trainer = make_trainer([ScriptedScore(scores), again, ModelCheckpoint(tmp_path)])
    trainer.fit(*loaders(), epochs=6, resume_from="last")
    assert trainer.state.global_step == 24 and again.wait == 2
    assert "saved when training was stopped" in capsys.readouterr().out


class PoisonBatch(Callback):
    """Puts a NaN into the first weight right before optimizer step `step` runs its forward."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer) -> None:
        if trainer.state.global_step + 1 == self.step:
            trainer.last_good = weights(trainer)
            with torch.no_grad():
                trainer.unwrapped_model[0].weight[0, 0] = math.nan


def test_terminate_on_nan_every_step_stops_before_the_step_and_keeps_the_checkpoint(tmp_path):
    guard = TerminateOnNaN(check_every_n_steps=1)
    trainer = make_trainer([guard, PoisonBatch(step=11), ModelCheckpoint(tmp_path, every_n_steps=2)])
    with pytest.raises(NonFiniteError) as info:
        trainer.fit(*loaders(), epochs=3)
    message = str(info.value)
    assert "epoch 2, batch 3, optimizer step 11" in message and "those of step 10" in message
    assert "0.weight.grad (" in message and "NaN" in message
    # The poisoned weight aside, the optimizer never applied the non-finite step.
    after = weights(trainer)
    after["0.weight"][0, 0] = trainer.last_good["0.weight"][0, 0]
    assert all(torch.equal(after[k], v) for k, v in trainer.last_good.items())
    assert json.loads((tmp_path / "last.json").read_text())["checkpoint"] == "epoch=0002-batch=0002-step=00000010"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch=0002-batch=0002-step=00000010", "last.json"]


def test_terminate_on_nan_by_default_raises_before_any_checkpoint_keeps_the_nan(tmp_path):
    # No host sync of its own: the flag stays on the device until a checkpoint is about to be saved.
    trainer = make_trainer([TerminateOnNaN(), PoisonBatch(step=11), ModelCheckpoint(tmp_path, every_n_steps=2)])
    with pytest.raises(NonFiniteError, match=r"non-finite gradients at optimizer step 11 \(found at step 12") as info:
        trainer.fit(*loaders(), epochs=3)
    assert "check_every_n_steps=1" in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch=0002-batch=0002-step=00000010", "last.json"]


def test_terminate_on_nan_by_default_stops_before_validation_without_checkpoints():
    trainer = make_trainer([TerminateOnNaN(), PoisonBatch(step=11)])
    with pytest.raises(NonFiniteError, match=r"optimizer step 11 \(found at step 16, epoch 2\)"):
        trainer.fit(*loaders(), epochs=3)
    assert math.isfinite(trainer.state.metrics["val/loss"])  # epoch 1's: epoch 2 never validated NaN weights


def test_terminate_on_nan_options():
    for bad in (0, -1, 1.5):
        with pytest.raises(TrainerError, match="check_every_n_steps"):
            TerminateOnNaN(check_every_n_steps=bad)


def test_terminate_on_nan_is_quiet_when_all_is_finite():
    trainer = make_trainer([TerminateOnNaN()])
    trainer.fit(*loaders(), epochs=1)
    assert trainer.state.global_step == 8


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_the_finite_check_finds_one_bad_value_among_millions(bad):
    tensors = [torch.randn(64, 64, 3, 3), torch.randn(1_000_000), torch.randn(10)]
    assert bool(all_finite(tensors))
    tensors[1][123_457] = bad
    assert not bool(all_finite(tensors))


def test_the_finite_check_calls_large_finite_gradients_finite():
    """Values whose squares overflow (a norm would call them infinite), and half-precision sums past 65504."""
    assert bool(all_finite([torch.full((1000,), 1e20)]))
    assert bool(all_finite([torch.ones(100_000, dtype=torch.float16), torch.ones(10, dtype=torch.bfloat16)]))
    assert not bool(all_finite([torch.tensor([1.0, math.nan], dtype=torch.float16)]))
    assert bool(all_finite([])) and bool(all_finite([torch.full((10,), 1e300, dtype=torch.float64)]))
