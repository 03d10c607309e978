"""EMA: the averaged weights against a hand-computed EMA and swa_utils' own function, val_ema in
TensorBoard and in ModelCheckpoint's best weights, exact resume, bad input."""

from __future__ import annotations

import copy
import json

import pytest
import safetensors.torch
import torch
from helpers.checkpoints import (
    StepLRCallback,
    StopAtStep,
    assert_identical,
    loaders,
    make_trainer,
    weights,
)
from helpers.tiny import tiny_classification_data
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.optim.swa_utils import get_ema_multi_avg_fn, update_bn
from torch.utils.data import DataLoader

from callbacks_kit import (
    EMA,
    Callback,
    ConfusionMatrix,
    ModelCheckpoint,
    ProgressBar,
    TensorBoardLogger,
    Trainer,
    TrainerError,
    accuracy,
)


def bn_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))


class RecordWeights(Callback):
    """The model's state after every optimizer step (floats only), as EMA sees it."""

    order = 100

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer: Trainer) -> None:
        if trainer.state.optimizer_stepped:
            self.states.append({k: v.detach().clone() for k, v in trainer.unwrapped_model.state_dict().items()})


def fit_recorded(ema: EMA, epochs: int = 1) -> tuple[Trainer, list[dict[str, torch.Tensor]]]:
    record = RecordWeights()
    model = bn_mlp()
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.2), nn.CrossEntropyLoss(),
                      callbacks=[ema, record], progress_bar=False, seed=0)  # fmt: skip
    trainer.fit(DataLoader(tiny_classification_data(64), batch_size=8, shuffle=True), epochs=epochs)
    return trainer, record.states


def test_ema_equals_a_hand_computed_ema_with_warmup_and_swa_utils_function():
    ema = EMA(decay=0.9, warmup=True, buffers="average", validate=False)
    _, states = fit_recorded(ema)  # 8 optimizer steps
    assert ema.updates == len(states) == 8
    floats = [k for k, v in states[0].items() if v.is_floating_point()]
    # By hand: the first update copies; update n then uses min(0.9, (1 + n) / (10 + n)).
    hand = {k: states[0][k].clone() for k in floats}
    for n, state in enumerate(states[1:], start=1):
        decay = min(0.9, (1 + n) / (10 + n))
        hand = {k: decay * hand[k] + (1 - decay) * state[k] for k in floats}
    averaged = ema.averaged_weights()
    for k in floats:  # weights and BatchNorm running statistics ("average")
        torch.testing.assert_close(averaged[k], hand[k], rtol=0, atol=1e-6)
    # PyTorch's own EMA function applied by hand gives the very same bits.
    by_swa = {k: v.clone() for k, v in states[0].items()}
    for n, state in enumerate(states[1:], start=1):
        keys = list(by_swa)
        get_ema_multi_avg_fn(min(0.9, (1 + n) / (10 + n)))(
            [by_swa[k] for k in keys if by_swa[k].is_floating_point()],
            [state[k] for k in keys if state[k].is_floating_point()],
            None,
        )
    assert_identical({k: averaged[k] for k in floats}, {k: by_swa[k] for k in floats})


def test_ema_without_warmup_every_second_step():
    ema = EMA(decay=0.75, warmup=False, every_n_steps=2, validate=False)
    _, states = fit_recorded(ema)
    used = states[1::2]  # steps 2, 4, 6, 8
    assert ema.updates == len(used) == 4
    hand = {k: v.clone() for k, v in used[0].items() if v.is_floating_point()}
    for state in used[1:]:
        hand = {k: 0.75 * v + 0.25 * state[k] for k, v in hand.items()}
    averaged = ema.averaged_weights()
    for k, v in hand.items():
        torch.testing.assert_close(averaged[k], v, rtol=0, atol=1e-6)


def test_recomputed_batchnorm_statistics_equal_swa_update_bn():
    ema = EMA(decay=0.9, buffers="recompute", recompute_batches=None)
    model = bn_mlp()
    train = DataLoader(tiny_classification_data(64), batch_size=8)
    val = DataLoader(tiny_classification_data(24, seed=1))
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.2), nn.CrossEntropyLoss(),
                      metrics={"accuracy": accuracy}, callbacks=[ema], progress_bar=False, seed=0)  # fmt: skip
    trainer.fit(train, val, epochs=1)
    # The averaged weights with statistics from torch's own update_bn over the same batches.
    reference = copy.deepcopy(ema.averaged.module)
    update_bn(((x,) for x, _ in train), reference)
    bn, ours = reference[1], ema.averaged.module[1]
    torch.testing.assert_close(ours.running_mean, bn.running_mean, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours.running_var, bn.running_var, rtol=0, atol=1e-6)
    assert not torch.equal(ours.running_mean, model[1].running_mean)  # not the live model's statistics
    assert "val_ema/accuracy" in trainer.state.metrics


def test_val_ema_is_logged_next_to_val_in_tensorboard(tmp_path):
    ema = EMA(decay=0.5)
    logger = TensorBoardLogger(str(tmp_path), graph=False, summary=False)
    trainer = make_trainer([logger, ema, ConfusionMatrix()])
    trainer.fit(*loaders(), epochs=2)
    metrics = trainer.state.metrics
    assert {"val/loss", "val/accuracy", "val_ema/loss", "val_ema/accuracy"} <= set(metrics)
    # The EMA validation is a real evaluation of the averaged weights.
    again = trainer.evaluate(loaders()[1], prefix="check", model=ema.averaged.module)
    assert again["check/loss"] == pytest.approx(metrics["val_ema/loss"], abs=1e-6)

    def read(folder):
        return EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0, "images": 0}).Reload()

    # Each validation in its own sub-run under the same tags: one chart, a colour each.
    events, validation, averaged = read(tmp_path), read(tmp_path / "validation"), read(tmp_path / "validation_ema")
    assert set(validation.Tags()["scalars"]) == set(averaged.Tags()["scalars"]) == {"loss", "accuracy"}
    assert len(averaged.Scalars("accuracy")) == 2 and len(validation.Scalars("accuracy")) == 2
    assert averaged.Scalars("loss")[-1].value == pytest.approx(metrics["val_ema/loss"])
    assert {"val_best/accuracy", "val_ema_best/accuracy", "val_ema_best/loss"} <= set(events.Tags()["scalars"])
    assert len(events.Images("confusion_matrix/val")) == 2  # of the trained weights only, one per epoch
    from tensorboard.plugins.custom_scalar import layout_pb2

    layout = layout_pb2.Layout()
    layout.ParseFromString(events.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
    charts = {chart.title: list(chart.multiline.tag) for category in layout.category for chart in category.chart}
    assert charts["accuracy"] == [r"^accuracy(/step)?$", r"^val_best/accuracy$", r"^val_ema_best/accuracy$"]
    assert charts["loss: train vs validation"] == [r"^loss(/step)?$"]


def test_checkpoint_monitoring_val_ema_exports_the_ema_weights_as_best(tmp_path):
    ema = EMA(decay=0.8)
    ckpt = ModelCheckpoint(tmp_path / "ckpt", monitor="val_ema/accuracy", mode="max")
    trainer = make_trainer([ema, ckpt])
    trainer.fit(*loaders(), epochs=2)
    best = safetensors.torch.load_file(str(tmp_path / "ckpt" / "best.safetensors"))
    assert ckpt.best_name is not None
    if ckpt.best_name == ckpt.last_name:  # the last epoch was the best: the EMA weights are those of now
        assert_identical(best, {k: v.cpu() for k, v in ema.averaged_weights().items()})
    assert best.keys() == weights(trainer).keys()
    # ...and they are the EMA weights saved in that checkpoint, not the trained ones.
    saved = safetensors.torch.load_file(str(ckpt.best_model_path / "state.safetensors"))
    for key, value in best.items():
        assert torch.equal(value, saved[f"callbacks.EMA.weights.{key}"])
    assert any(not torch.equal(best[k], v) for k, v in weights(trainer).items())
    # A val/ monitor keeps exporting the trained weights.
    plain = ModelCheckpoint(tmp_path / "plain", monitor="val/accuracy", mode="max")
    trainer = make_trainer([EMA(decay=0.8), plain])
    trainer.fit(*loaders(), epochs=1)
    exported = (tmp_path / "plain" / "best.safetensors").read_bytes()
    assert exported == (plain.best_model_path / "model.safetensors").read_bytes()


def _ema_state(ema: EMA) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in ema.averaged_weights().items()}


def test_resume_with_ema_is_bit_identical(tmp_path):
    stop_at = 5  # mid-epoch, between two EMA updates

    def run(callbacks, seed=0, resume=None):
        trainer = make_trainer(callbacks, seed=seed)
        trainer.fit(*loaders(), epochs=3, resume_from=resume)
        return trainer

    reference_ema = EMA(decay=0.9, every_n_steps=2)
    reference = run([reference_ema, StepLRCallback()])
    first_ema = EMA(decay=0.9, every_n_steps=2)
    run([first_ema, StepLRCallback(), ModelCheckpoint(tmp_path / "ckpt"), StopAtStep(stop_at)])
    assert first_ema.updates == 2
    torch.manual_seed(999)  # another process would start from other RNG states
    resumed_ema = EMA(decay=0.9, every_n_steps=2)
    resumed = run([resumed_ema, StepLRCallback(), ModelCheckpoint(tmp_path / "ckpt")], seed=123, resume="last")
    assert resumed_ema.updates == reference_ema.updates == 12
    assert_identical(_ema_state(resumed_ema), _ema_state(reference_ema))
    assert_identical(weights(resumed), weights(reference))
    ema_metrics = {k: v for k, v in reference.state.metrics.items() if k.startswith("val_ema/")}
    assert ema_metrics and all(resumed.state.metrics[k] == v for k, v in ema_metrics.items())
    saved = json.loads(next((tmp_path / "ckpt").glob("*/state.json")).read_text())
    assert saved["callbacks"]["EMA"]["decay"] == 0.9


def test_the_epoch_line_shows_val_ema_only_when_this_run_validates_it(tmp_path, capsys):
    make_trainer([EMA(decay=0.9), ModelCheckpoint(tmp_path), ProgressBar(bar=False)]).fit(*loaders(), epochs=1)
    first = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch 1/1")]
    assert first and "val_ema/loss" in first[0]
    resumed = make_trainer([ModelCheckpoint(tmp_path), ProgressBar(bar=False)])  # resumed without the EMA
    resumed.fit(*loaders(), epochs=2, resume_from="last")
    second = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch 2/2")]
    assert second and "val/loss" in second[0] and "val_ema/" not in second[0]


class _EmaScore(Callback):
    """Sets `val_ema/score` from a list, one value per epoch, after each EMA validation."""

    order = 100

    def __init__(self, values: list[float]) -> None:
        self.values = values

    def on_validation_end(self, trainer: Trainer) -> None:
        if trainer.state.validation_prefix == "val_ema":
            trainer.state.metrics["val_ema/score"] = self.values[trainer.state.epoch]


def test_resume_rewrites_a_best_safetensors_that_is_not_the_records_best_ema(tmp_path):
    def fit(epochs: int, resume: str | None = None) -> ModelCheckpoint:
        checkpoint = ModelCheckpoint(tmp_path, monitor="val_ema/score", mode="max")
        make_trainer([EMA(decay=0.8), _EmaScore([0.1, 0.9]), checkpoint]).fit(*loaders(), epochs=epochs,
                                                                             resume_from=resume)  # fmt: skip
        return checkpoint

    fit(1)
    older = (tmp_path / "best.safetensors").read_bytes()
    fit(2)  # epoch 2 is the best; a kill before best.safetensors was replaced would leave the older one:
    exported = (tmp_path / "best.safetensors").read_bytes()
    (tmp_path / "best.safetensors").write_bytes(older)
    checkpoint = fit(2, resume="last")  # nothing left to train: only the repair runs
    assert checkpoint.best_name == "epoch=0002-step=00000016"
    assert (tmp_path / "best.safetensors").read_bytes() == exported
    saved = safetensors.torch.load_file(str(tmp_path / checkpoint.best_name / "state.safetensors"))
    best = safetensors.torch.load_file(str(tmp_path / "best.safetensors"))
    assert all(torch.equal(value, saved[f"callbacks.EMA.weights.{key}"]) for key, value in best.items())


def test_resume_with_another_decay_is_refused(tmp_path):
    make_trainer([EMA(decay=0.9), ModelCheckpoint(tmp_path), StopAtStep(3)]).fit(*loaders(), epochs=1)
    with pytest.raises(TrainerError, match="decay 0.9, this run asks for 0.99"):
        make_trainer([EMA(decay=0.99), ModelCheckpoint(tmp_path)]).fit(*loaders(), epochs=1, resume_from="last")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"decay": 1.0}, "strictly between 0 and 1"),
        ({"decay": 0}, "strictly between 0 and 1"),
        ({"decay": -0.5}, "strictly between 0 and 1"),
        ({"decay": float("nan")}, "strictly between 0 and 1"),
        ({"every_n_steps": 0}, "every_n_steps must be an int >= 1"),
        ({"buffers": "mean"}, "use 'average' or 'recompute'"),
        ({"prefix": "val"}, "tag prefix of its own"),
    ],
)
def test_bad_ema_options_are_refused(kwargs, message):
    with pytest.raises(TrainerError, match=message):
        EMA(**kwargs)
