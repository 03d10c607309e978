"""BatchNormRecalibration: statistics equal to swa_utils.update_bn for the validated weights, frozen
BatchNorms untouched, the run's batches unchanged; the main job recalibrates by default."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers.tiny import tiny_classification_data
from torch import nn
from torch.optim.swa_utils import update_bn
from torch.utils.data import DataLoader

from callbacks_kit import BatchNormRecalibration, Callback, Trainer, TrainerError, accuracy
from callbacks_kit.cli.job_callbacks import finetune_callbacks
from callbacks_kit.cli.parser import build_parser
from callbacks_kit.errors import CLIError
from callbacks_kit.finetune import freeze


def bn_mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(8, 16),
        nn.BatchNorm1d(16),
        nn.ReLU(),
        nn.Linear(16, 16),
        nn.BatchNorm1d(16),
        nn.ReLU(),
        nn.Linear(16, 3),
    )


def fit(model: nn.Module, callbacks: list[Callback], epochs: int = 1, shuffle: bool = False) -> Trainer:
    train = DataLoader(tiny_classification_data(64), batch_size=8, shuffle=shuffle)
    val = DataLoader(tiny_classification_data(24, seed=1), batch_size=8)
    # A high LR: the weights move far between the steps the running statistics average.
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.5), nn.CrossEntropyLoss(),
                      metrics={"accuracy": accuracy}, callbacks=callbacks, progress_bar=False, seed=0)  # fmt: skip
    trainer.fit(train, val, epochs=epochs)
    return trainer


def test_validation_uses_the_statistics_of_the_validated_weights():
    model = bn_mlp()
    trainer = fit(model, [BatchNormRecalibration(batches=None)])
    # The weights of the last validation with statistics from torch's own update_bn over the same batches.
    reference = copy.deepcopy(model)
    update_bn(((x,) for x, _ in DataLoader(tiny_classification_data(64), batch_size=8)), reference)
    for index in (1, 4):
        torch.testing.assert_close(model[index].running_mean, reference[index].running_mean, rtol=0, atol=1e-6)
        torch.testing.assert_close(model[index].running_var, reference[index].running_var, rtol=0, atol=1e-6)
    again = trainer.evaluate(DataLoader(tiny_classification_data(24, seed=1), batch_size=8), prefix="check")
    assert again["check/loss"] == pytest.approx(trainer.state.metrics["val/loss"], abs=1e-6)
    # Without it the running statistics lag the weights: the same run ends with other statistics.
    plain = bn_mlp()
    fit(plain, [])
    assert not torch.allclose(plain[4].running_mean, reference[4].running_mean, atol=1e-3)


def test_a_frozen_batchnorm_keeps_its_statistics_and_the_others_are_recomputed():
    model = bn_mlp()
    frozen_mean = model[1].running_mean.clone()

    class FreezeFirst(Callback):
        def on_train_batch_start(self, trainer: Trainer) -> None:
            freeze(trainer.unwrapped_model[:3])

    fit(model, [FreezeFirst(), BatchNormRecalibration(batches=2)])
    assert torch.equal(model[1].running_mean, frozen_mean)
    assert model[4].num_batches_tracked.item() == 2  # reset, then two batches; training adds none after it


def test_the_run_sees_the_same_batches_with_and_without_recalibration():
    class FirstBatches(Callback):
        def __init__(self) -> None:
            self.inputs: list[torch.Tensor] = []

        def on_before_forward(self, trainer: Trainer) -> None:
            if trainer.state.batch_idx == 0:
                self.inputs.append(trainer.last_inputs.clone())

    with_it, without = FirstBatches(), FirstBatches()
    fit(bn_mlp(), [with_it, BatchNormRecalibration(batches=3)], epochs=3, shuffle=True)
    fit(bn_mlp(), [without], epochs=3, shuffle=True)
    assert len(with_it.inputs) == 3
    for ours, theirs in zip(with_it.inputs, without.inputs, strict=True):
        assert torch.equal(ours, theirs)


@pytest.mark.parametrize("batches", [0, -1, 2.5, True])
def test_bad_batch_counts_are_refused(batches):
    with pytest.raises(TrainerError, match="positive int or None"):
        BatchNormRecalibration(batches=batches)


def test_the_main_job_recalibrates_before_each_validation_by_default():
    def recalibrations(*argv: str) -> list[int | None]:
        args = build_parser().parse_args(["train", *argv])
        return [c.batches for c in finetune_callbacks(args, 10) if isinstance(c, BatchNormRecalibration)]

    assert recalibrations() == [3]
    assert recalibrations("--bn-recalibration", "25") == [25]
    assert recalibrations("--bn-recalibration", "0") == []
    with pytest.raises(CLIError, match="--bn-recalibration must be 0"):
        recalibrations("--bn-recalibration", "-1")
