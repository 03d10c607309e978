"""Weight and gradient histograms: binned on the device, read back with TensorBoard's EventAccumulator."""

import math
import warnings

import pytest
import torch
from helpers.tiny import tiny_classification_data, tiny_mlp
from torch.utils.data import DataLoader

from callbacks_kit.callbacks.base import Callback
from callbacks_kit.callbacks.tensorboard_logger import TensorBoardLogger
from callbacks_kit.callbacks.weight_histograms import WeightHistograms, compute_histograms
from callbacks_kit.inspection.event_report import load
from callbacks_kit.trainer import Trainer


def test_counts_match_histc_and_fields_are_right():
    x = torch.randn(10_000, generator=torch.Generator().manual_seed(0)) * 3
    (h,) = compute_histograms([x], bins=30)
    assert h is not None and len(h.bucket_counts) == len(h.bucket_limits) == 30
    expected = torch.histc(x, 30, float(x.min()), float(x.max()))
    assert h.bucket_counts == expected.tolist()
    assert h.num == 10_000 and sum(h.bucket_counts) == 10_000
    assert h.min == pytest.approx(float(x.min())) and h.max == pytest.approx(float(x.max()))
    assert h.bucket_limits[-1] == h.max
    assert h.sum == pytest.approx(float(x.sum()), abs=1e-2)
    assert h.sum_squares == pytest.approx(float((x * x).sum()), rel=1e-5)


def test_tensors_longer_than_a_chunk_count_every_value(monkeypatch):
    from callbacks_kit.inspection import histogram

    monkeypatch.setattr(histogram._Binner, "CHUNK", 1000)  # 10,500 values: ten full chunks and a short one
    x = torch.randn(10_500, generator=torch.Generator().manual_seed(1))
    small = torch.randn(300, generator=torch.Generator().manual_seed(2))
    big, little = compute_histograms([x, small], bins=30)
    assert big.bucket_counts == torch.histc(x, 30, float(x.min()), float(x.max())).tolist()
    assert little.bucket_counts == torch.histc(small, 30, float(small.min()), float(small.max())).tolist()


def test_many_bins_use_histc_and_shapes_do_not_matter():
    x = torch.rand(3, 4, 5)
    (h,) = compute_histograms([x], bins=300)
    assert len(h.bucket_counts) == 300 and sum(h.bucket_counts) == 60


def test_constant_empty_and_non_finite_tensors():
    nan, inf = float("nan"), float("inf")
    constant, empty, mixed, bad = compute_histograms(
        [torch.ones(7), torch.empty(0), torch.tensor([1.0, nan, 3.0, -inf, 2.0]), torch.tensor([nan, inf])]
    )
    assert constant.bucket_counts == [7.0] and constant.min == constant.max == 1.0
    assert empty is None and bad is None
    assert mixed.num == 3 and mixed.nonfinite == 2 and sum(mixed.bucket_counts) == 3
    assert (mixed.min, mixed.max, mixed.sum) == (1.0, 3.0, 6.0)


def test_half_precision_tensors():
    (h,) = compute_histograms([torch.randn(100).to(torch.bfloat16)])
    assert sum(h.bucket_counts) == 100


class RecordGrads(Callback):
    """Keeps the min and max of each gradient when the optimizer is about to step."""

    order = 200

    def __init__(self):
        self.seen = {}

    def on_after_backward(self, trainer):
        for name, p in trainer.unwrapped_model.named_parameters():
            self.seen[(name, trainer.state.global_step + 1)] = (float(p.grad.min()), float(p.grad.max()))


def fit(tmp_path, histograms, epochs=2, accumulation=1, extra=()):
    model = tiny_mlp()
    loader = DataLoader(tiny_classification_data(32), batch_size=8)
    trainer = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        torch.nn.CrossEntropyLoss(),
        callbacks=[TensorBoardLogger(str(tmp_path), graph=False, summary=False), histograms, *extra],
        gradient_accumulation_steps=accumulation,
        progress_bar=False,
    )
    trainer.fit(loader, epochs=epochs)
    return load(tmp_path)


def test_per_epoch_weights_and_last_step_gradients(tmp_path):
    recorder = RecordGrads()
    acc = fit(tmp_path, WeightHistograms(), extra=[recorder])
    tags = set(acc.Tags()["histograms"])
    names = ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert tags == {f"weights/{n}" for n in names} | {f"grads/{n}" for n in names}
    assert [e.step for e in acc.Histograms("weights/0.weight")] == [0, 4, 8]  # start, then each epoch end
    grads = acc.Histograms("grads/2.weight")
    assert [e.step for e in grads] == [4, 8]  # each epoch's last optimizer step
    for event in grads:  # the gradients as the optimizer saw them, before zero_grad
        low, high = recorder.seen[("2.weight", event.step)]
        assert math.isclose(event.histogram_value.min, low, rel_tol=1e-6)
        assert math.isclose(event.histogram_value.max, high, rel_tol=1e-6)
        assert len(event.histogram_value.bucket) == 30
        assert sum(event.histogram_value.bucket) == event.histogram_value.num == 48


def test_every_n_steps_with_accumulation_and_filter(tmp_path):
    histograms = WeightHistograms(every_n_steps=2, include=r"^0\.", log_at_start=False)
    acc = fit(tmp_path, histograms, epochs=2, accumulation=2)  # 2 optimizer steps per epoch
    assert set(acc.Tags()["histograms"]) == {"weights/0.weight", "weights/0.bias", "grads/0.weight", "grads/0.bias"}
    assert [e.step for e in acc.Histograms("grads/0.weight")] == [2, 4]
    assert [e.step for e in acc.Histograms("weights/0.bias")] == [2, 4]


def test_callable_filter_and_weights_only(tmp_path):
    histograms = WeightHistograms(grads=False, include=lambda name, p: name.endswith("bias"), bins=8)
    acc = fit(tmp_path, histograms, epochs=1)
    assert set(acc.Tags()["histograms"]) == {"weights/0.bias", "weights/2.bias"}
    assert len(acc.Histograms("weights/0.bias")[-1].histogram_value.bucket) == 8


def test_non_finite_weights_warn_once_and_do_not_crash(tmp_path):
    class Poison(Callback):
        def on_epoch_end(self, trainer):
            with torch.no_grad():
                trainer.unwrapped_model[0].weight[0, 0] = float("nan")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = tiny_mlp()
        trainer = Trainer(
            model,
            torch.optim.SGD(model.parameters(), lr=0.0),
            torch.nn.CrossEntropyLoss(),
            callbacks=[TensorBoardLogger(str(tmp_path), graph=False, summary=False), Poison(), WeightHistograms()],
            progress_bar=False,
        )
        trainer.fit(DataLoader(tiny_classification_data(16), batch_size=8), epochs=2)
    messages = [str(w.message) for w in caught if "NaN/inf" in str(w.message)]
    assert len([m for m in messages if "weights/0.weight" in m]) == 1
    last = load(tmp_path).Histograms("weights/0.weight")[-1].histogram_value
    assert last.num == 16 * 8 - 1


def test_bad_options():
    with pytest.raises(ValueError):
        WeightHistograms(every_n_steps=0)
    with pytest.raises(ValueError):
        compute_histograms([torch.ones(2)], bins=0)
