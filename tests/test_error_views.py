"""TopLosses and ClassReport: the true top-k losses, per-class numbers equal to scikit-learn's and the
confusion matrix's, PR curves equal to TensorBoard's own `add_pr_curve`, bad input refused before training."""

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.tiny import small_bn_cnn, tiny_classification_data, tiny_mlp
from sklearn.metrics import precision_recall_fscore_support
from tensorboard.util import tensor_util
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset
from torch.utils.tensorboard import SummaryWriter

from benchmarks.sync_counter import HostSyncCounter
from callbacks_kit import Callback, ClassReport, ConfusionMatrix, TensorBoardLogger, TopLosses, Trainer, TrainerError
from callbacks_kit.inspection.event_report import load
from callbacks_kit.inspection.render import line_height, text_size

# TensorBoard's image card is 350 px wide and draws every image at that width, up to 1024 px high
# (tf-image-loader's style).
CARD_WIDTH = 350

NAMES = ["ant", "bee", "cat"]


def image_data(n: int, seed: int) -> TensorDataset:
    """3-class 16 px images whose class shows in the mean of a channel, with label noise (some losses are high)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(n, 3, 16, 16, generator=g)
    x[torch.arange(n), y] += 0.6
    flip = torch.rand(n, generator=g) < 0.2
    y = torch.where(flip, (y + 1) % 3, y)
    return TensorDataset(x, y)


def fit(model, callbacks, train, val, epochs=1, loss_fn=None, tmp_path=None, **kwargs):
    writer = [TensorBoardLogger(str(tmp_path), graph=False, summary=False)] if tmp_path is not None else []
    trainer = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        loss_fn or nn.CrossEntropyLoss(),
        callbacks=[*writer, *callbacks],
        progress_bar=False,
        seed=0,
        **kwargs,
    )
    trainer.fit(DataLoader(train, batch_size=8, shuffle=True), DataLoader(val, batch_size=8), epochs=epochs)
    return trainer


@torch.no_grad()
def logits_over(trainer: Trainer, dataset: TensorDataset, call=lambda model, x: model(x)) -> torch.Tensor:
    return call(trainer.unwrapped_model.eval(), dataset.tensors[0])


def test_gallery_holds_the_true_top_k_losses(tmp_path):
    val = image_data(37, seed=1)  # 37: an uneven last batch
    top = TopLosses(k=6, class_names=NAMES, gradcam=True, mean=None, std=None)
    trainer = fit(small_bn_cnn(), [top], image_data(48, seed=0), val, tmp_path=tmp_path)
    losses = F.cross_entropy(logits_over(trainer, val), val.tensors[1], reduction="none")
    expected = losses.topk(6)
    assert top.positions.tolist() == expected.indices.tolist()
    assert torch.allclose(top.losses, expected.values, atol=1e-5)
    assert torch.equal(top.images, val.tensors[0][expected.indices])  # the samples' own images
    acc = load(tmp_path)
    (image,) = acc.Images("top_losses/val")
    caption = 3 * line_height(12) + 4
    assert (image.width, image.height) == (3 * 110 + 4 * 2, 2 * (110 + caption) + 3 * 2)  # 6 tiles, 3 per row
    text = tensor_util.make_ndarray(acc.Tensors("top_losses/val/text_summary")[0].tensor_proto).item().decode()
    worst = int(expected.indices[0])
    assert f"| 1 | {worst} | {float(expected.values[0]):.3f} |" in text
    assert "Most confused" in text and " → " in text


@pytest.mark.parametrize("side", [16, 64, 224])
def test_gallery_captions_are_drawn_at_the_size_tensorboard_shows_them(side):
    top = TopLosses(k=16, class_names=["triangle", "circle", "square"], mean=None, std=None)
    images = torch.rand(16, 3, side, side)
    probs = torch.full((16, 3), 0.2).index_fill_(1, torch.tensor([0]), 0.6)
    gallery = top.gallery(None, images, torch.rand(16) * 9, torch.arange(1000, 1016), probs, torch.ones(16).long())
    # The default 16 samples fit the card's width, so TensorBoard draws the 12 px captions at least 1:1
    # (at 4 columns of 128 px it shrank them to 8 px), and each caption fits its 110 px tile whole.
    assert CARD_WIDTH * 0.95 <= gallery.shape[-1] <= CARD_WIDTH
    assert gallery.shape[-2] == 6 * (110 + 3 * line_height(12) + 4) + 7 * 2 <= 1024  # 6 rows, no scroll bar
    assert max(text_size(text, 12)[0] for text in ("#1015  loss 8.99", "pred triangle 60%", "true circle 20%")) < 108


def test_only_the_validation_it_is_meant_for(tmp_path):
    val = image_data(24, seed=1)
    top, report = TopLosses(k=4, mean=None, std=None), ClassReport()
    trainer = fit(small_bn_cnn(), [top, report], image_data(32, seed=0), val, tmp_path=tmp_path)
    before, stats = top.positions.clone(), report.stats
    other = image_data(24, seed=7)
    trainer.evaluate(DataLoader(other, batch_size=8), prefix="val_ema")
    assert torch.equal(top.positions, before) and report.stats is stats


def test_class_report_equals_scikit_learn_and_the_confusion_matrix(tmp_path):
    val = tiny_classification_data(61, seed=1)
    report, confusion = ClassReport(class_names=NAMES), ConfusionMatrix()
    trainer = fit(tiny_mlp(), [report, confusion], tiny_classification_data(64), val, tmp_path=tmp_path)
    predicted = logits_over(trainer, val).argmax(1).numpy()
    truth = val.tensors[1].numpy()
    p, r, f, s = precision_recall_fscore_support(truth, predicted, labels=[0, 1, 2], zero_division=0)
    assert np.allclose(report.stats.precision, p) and np.allclose(report.stats.recall, r)
    assert np.allclose(report.stats.f1, f) and report.stats.support == s.tolist()
    for average in ("macro", "weighted"):
        ap, ar, af, _ = precision_recall_fscore_support(truth, predicted, average=average, zero_division=0)
        assert np.allclose(list(report.stats.average(average).values()), [ap, ar, af])
    assert torch.equal(report.confusion.matrix(), confusion.counts[:-1].view(3, 3).cpu())
    acc = load(tmp_path)
    f1 = acc.Scalars("val_class/bee/f1")
    assert len(f1) == 1 and abs(f1[0].value - f[1]) < 1e-6
    assert abs(acc.Scalars("val_class/macro/f1")[0].value - f.mean()) < 1e-6
    assert acc.Scalars("val_class/cat/support")[0].value == s[2]
    text = tensor_util.make_ndarray(acc.Tensors("class_report/val/text_summary")[0].tensor_proto).item().decode()
    assert f"| bee | {p[1]:.3f} | {r[1]:.3f} | {f[1]:.3f} | {s[1]} |" in text


def test_pr_curves_equal_tensorboards_add_pr_curve(tmp_path):
    val = tiny_classification_data(61, seed=1)
    trainer = fit(tiny_mlp(), [ClassReport(class_names=NAMES)], tiny_classification_data(64), val, tmp_path=tmp_path)
    probs = logits_over(trainer, val).softmax(1)
    with SummaryWriter(str(tmp_path / "reference")) as writer:
        for c, name in enumerate(NAMES):
            writer.add_pr_curve(name, val.tensors[1] == c, probs[:, c], num_thresholds=127)
    ours, reference = load(tmp_path), load(tmp_path / "reference")
    for name in NAMES:
        (mine,) = ours.Tensors(f"pr_curve/val/{name}")
        (theirs,) = reference.Tensors(name)
        a, b = tensor_util.make_ndarray(mine.tensor_proto), tensor_util.make_ndarray(theirs.tensor_proto)
        assert a.shape == b.shape == (6, 127)
        assert np.allclose(a, b, atol=1e-6), name


def test_validation_batches_read_nothing_from_the_device():
    class Marks(Callback):
        def __init__(self, counter):
            self.counter, self.per_batch = counter, []

        def on_validation_start(self, trainer):
            self.start = len(self.counter.events)

        def on_validation_batch_end(self, trainer):
            self.per_batch.append(len(self.counter.events) - self.start)

    counter = HostSyncCounter()
    marks = Marks(counter)
    marks.order = 10**6  # after the views
    model = small_bn_cnn()
    trainer = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        nn.CrossEntropyLoss(),
        callbacks=[TopLosses(k=3), ClassReport(), marks],
        progress_bar=False,
    )
    val = DataLoader(image_data(24, seed=1), batch_size=8)
    with counter:
        trainer.evaluate(val)
    assert marks.per_batch == [0, 0, 0], counter.events


class Flat(nn.Module):
    """One score per sample: not (N, classes) logits."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 1)

    def forward(self, x):
        return self.linear(x).squeeze(1)


@pytest.mark.parametrize("view", [TopLosses, ClassReport])
def test_bad_input_is_refused_before_training(view):
    model = Flat()
    start = model.linear.weight.detach().clone()
    data = tiny_classification_data(16)
    with pytest.raises(TrainerError, match=r"\(N, classes\) logits.*got \(2,\)"):
        fit(model, [view()], data, data, loss_fn=lambda out, y: out.mean())
    assert torch.equal(model.linear.weight, start)  # no step was taken
    with pytest.raises(TrainerError, match="2 class_names for a model with 3 outputs"):
        fit(tiny_mlp(), [view(class_names=["a", "b"])], data, data)
    with pytest.raises(TrainerError, match="every_n_validations"):
        view(every_n_validations=0)


def test_k_larger_than_the_validation_set_and_inputs_that_are_not_images(tmp_path):
    val = tiny_classification_data(5, seed=1)
    top = TopLosses(k=8)
    with pytest.warns(RuntimeWarning) as seen:
        fit(tiny_mlp(), [top], tiny_classification_data(16), val, tmp_path=tmp_path)
    messages = [str(w.message) for w in seen]
    assert any("k=8 but the validation set has 5 samples" in m for m in messages)
    assert any("not (N, C, H, W) images; only the text table" in m for m in messages)
    assert sorted(top.positions.tolist()) == [0, 1, 2, 3, 4]
    acc = load(tmp_path)
    assert acc.Tags()["images"] == [] and "top_losses/val/text_summary" in acc.Tags()["tensors"]


def test_an_iterable_validation_set_is_checked_per_batch_once(tmp_path):
    class Stream(IterableDataset):
        def __iter__(self):
            g = torch.Generator().manual_seed(0)
            for _ in range(12):
                yield torch.randn(8, generator=g), torch.tensor(0.5)  # float targets: not class indices

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        model = Flat()
        trainer = Trainer(
            model,
            torch.optim.SGD(model.parameters(), lr=0.1),
            lambda out, y: (out - y).pow(2).mean(),
            callbacks=[TensorBoardLogger(str(tmp_path), graph=False, summary=False), ClassReport()],
            progress_bar=False,
        )
        trainer.fit(DataLoader(tiny_classification_data(8), batch_size=4), DataLoader(Stream(), batch_size=4), 2)
    disabled = [w for w in seen if "ClassReport:" in str(w.message)]
    assert len(disabled) == 1 and "disabled" in str(disabled[0].message)


def test_a_model_that_makes_its_own_loss_and_returns_a_dict():
    class WithLoss(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = tiny_mlp()

        def forward(self, x, y):
            logits = self.net(x)
            return {"loss": F.cross_entropy(logits, y), "logits": logits}

    val = tiny_classification_data(21, seed=1)
    model = WithLoss()
    top, report = TopLosses(k=3), ClassReport()
    trainer = Trainer(
        model, torch.optim.SGD(model.parameters(), lr=0.1), callbacks=[top, report], progress_bar=False
    )  # fmt: skip
    trainer.fit(DataLoader(tiny_classification_data(32), batch_size=8), DataLoader(val, batch_size=8))
    losses = F.cross_entropy(logits_over(trainer, val, lambda m, x: m.net(x)), val.tensors[1], reduction="none")
    assert top.positions.tolist() == losses.topk(3).indices.tolist()
    assert sum(report.stats.support) == 21
