"""An optimizer over other parameters, one-shot iterables, NaN without TerminateOnNaN."""

from __future__ import annotations

import json
import math

import pytest
import safetensors.torch
import torch
from helpers.checkpoints import ScriptedScore, loaders, make_trainer
from helpers.tiny import tiny_classification_data, tiny_mlp
from torch.utils.data import DataLoader

from callbacks_kit import Callback, ModelCheckpoint, Trainer
from callbacks_kit.errors import NonFiniteError, TrainerError


# ------------------------------------------------------------------------------ class 6: optimizer
def test_an_optimizer_over_another_models_parameters_is_refused():
    model, other = tiny_mlp(), tiny_mlp(seed=1)
    with pytest.raises(TrainerError, match="holds none of the model's 4 trainable parameters"):
        Trainer(model, torch.optim.AdamW(other.parameters()), torch.nn.CrossEntropyLoss(), cpu=True)


def test_an_optimizer_missing_some_trainable_parameters_warns_naming_them():
    model = tiny_mlp()
    with pytest.warns(
        UserWarning, match=r"2 of the model's 4 trainable parameters are not in the optimizer.*2\.weight"
    ):
        Trainer(model, torch.optim.AdamW(model[0].parameters()), torch.nn.CrossEntropyLoss(), cpu=True)


def test_frozen_parameters_left_out_of_the_optimizer_are_fine(recwarn):
    model = tiny_mlp()
    model[0].requires_grad_(False)
    Trainer(model, torch.optim.AdamW(model[2].parameters()), torch.nn.CrossEntropyLoss(), cpu=True)
    assert not [w for w in recwarn if "not in the optimizer" in str(w.message)]


# ------------------------------------------------------------------------------ class 7: one-shot
@pytest.mark.parametrize("which", ["train", "val"])
def test_a_generator_as_a_loader_is_refused_before_any_batch_is_read(which):
    batches = list(DataLoader(tiny_classification_data(32), batch_size=8))
    read = []

    def generator():
        for batch in batches:
            read.append(1)
            yield batch

    model = tiny_mlp()
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), torch.nn.CrossEntropyLoss(), cpu=True)
    train, val = (generator(), batches) if which == "train" else (batches, generator())
    with pytest.raises(TrainerError, match=f"{which}_loader is a one-shot iterator \\(generator\\)"):
        trainer.fit(train, val, epochs=2)
    assert read == []  # nothing consumed
    trainer.fit(batches, batches, epochs=2)  # a list of batches, as the message suggests, trains
    assert trainer.state.global_step == 8


# ------------------------------------------------------------------------------ class 8: NaN
class PoisonAtEpoch(Callback):
    """Sets a weight to NaN at the start of epoch `epoch` (0-based): a diverged run without a guard."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_start(self, trainer) -> None:
        if trainer.state.epoch == self.epoch:
            with torch.no_grad():
                next(trainer.unwrapped_model.parameters())[0, 0] = math.nan


def _finite(path) -> bool:
    return all(bool(t.isfinite().all()) for t in safetensors.torch.load_file(str(path)).values())


def test_non_finite_weights_never_replace_a_clean_checkpoint(tmp_path):
    checkpoint = ModelCheckpoint(tmp_path, monitor="val/loss", mode="min")
    with pytest.raises(
        NonFiniteError, match=r"non-finite weights in .* the last checkpoint, epoch=0001-step=00000008, is kept"
    ):
        make_trainer([PoisonAtEpoch(1), checkpoint]).fit(*loaders(), epochs=3)
    assert json.loads((tmp_path / "last.json").read_text())["checkpoint"] == "epoch=0001-step=00000008"
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["epoch=0001-step=00000008"]
    assert _finite(tmp_path / "epoch=0001-step=00000008" / "model.safetensors")
    assert _finite(tmp_path / "best.safetensors")


class SetBuffer(Callback):
    """Registers an unused float buffer holding `values` on the model at fit start (state the loss never touches)."""

    def __init__(self, values: list[float]) -> None:
        self.values = values

    def on_fit_start(self, trainer) -> None:
        trainer.unwrapped_model.register_buffer("probe", torch.tensor(self.values))


def test_finite_weights_whose_sum_overflows_are_saved(tmp_path):
    # The check sums each tensor first; 3e38 + 3e38 overflows float32 although both values are finite.
    make_trainer([SetBuffer([3e38, 3e38]), ModelCheckpoint(tmp_path)]).fit(*loaders(), epochs=1)
    saved = safetensors.torch.load_file(str(tmp_path / "epoch=0001-step=00000008" / "model.safetensors"))
    assert torch.equal(saved["probe"], torch.tensor([3e38, 3e38]))


def test_plus_and_minus_infinity_in_one_tensor_are_caught(tmp_path):
    with pytest.raises(NonFiniteError, match=r"non-finite weights in 1 tensor\(s\) \(probe\)"):
        make_trainer([SetBuffer([math.inf, -math.inf]), ModelCheckpoint(tmp_path)]).fit(*loaders(), epochs=1)
    assert not (tmp_path / "last.json").exists()


def test_a_nan_score_does_not_replace_the_last_checkpoint(tmp_path):
    checkpoint = ModelCheckpoint(tmp_path, monitor="val/score", mode="max")
    with pytest.warns(UserWarning, match=r"val/score is nan .* the last checkpoint, epoch=0001-step=00000008, is kept"):
        make_trainer([ScriptedScore([0.5, math.nan]), checkpoint]).fit(*loaders(), epochs=2)
    assert json.loads((tmp_path / "last.json").read_text())["checkpoint"] == "epoch=0001-step=00000008"
