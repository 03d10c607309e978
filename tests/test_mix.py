"""MixUp/CutMix of the training batch: what reaches the forward, torchvision's output, train accuracy, bad input."""

from __future__ import annotations

import pytest
import torch
from helpers.mixing import mix_loaders
from helpers.tiny import small_bn_cnn, tiny_image_data, tiny_mlp
from sklearn.metrics import accuracy_score, confusion_matrix
from torch import nn
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from benchmarks.sync_counter import syncs_per_step
from callbacks_kit import Callback, ConfusionMatrix, GradCAM, MixUpCutMix, Trainer, accuracy
from callbacks_kit.data import ShapesDataset
from callbacks_kit.errors import AugmentationError
from callbacks_kit.state import TrainState


class Recorder(Callback):
    """Keeps what `trainer.last_inputs`/`last_targets` hold at `on_before_forward` (and the RNG state there)."""

    def __init__(self, order: int) -> None:
        self.order = order
        self.batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.at_end: list[tuple[torch.Tensor, torch.Tensor]] = []

    def on_before_forward(self, trainer: Trainer) -> None:
        self.batches.append((trainer.last_inputs.clone(), trainer.last_targets.clone(), torch.get_rng_state()))

    def on_train_batch_end(self, trainer: Trainer) -> None:
        self.at_end.append((trainer.last_inputs, trainer.last_targets))


class SeenByForward(nn.Module):
    """Wraps a model and keeps every training input it is called with."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.seen = model, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.seen.append(x.detach().clone())
        return self.model(x)


def fit(model: nn.Module, callbacks: list[Callback], loss_fn=None, epochs: int = 1, **kwargs) -> Trainer:
    trainer = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.05),
        loss_fn or nn.CrossEntropyLoss(),
        metrics={"accuracy": accuracy},
        callbacks=callbacks,
        seed=0,
        progress_bar=False,
        **kwargs,
    )
    trainer.fit(*mix_loaders(), epochs=epochs)
    return trainer


def test_the_replaced_batch_reaches_the_forward_and_the_loss_and_stays_for_batch_end():
    class Replace(Callback):
        def on_before_forward(self, trainer: Trainer) -> None:
            trainer.last_inputs = trainer.last_inputs.flip(0) * 2
            trainer.last_targets = torch.nn.functional.one_hot(trainer.last_targets.flip(0), 3).float()

    losses: list[torch.Tensor] = []

    def loss_fn(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            losses.append(targets.clone())
        return nn.functional.cross_entropy(outputs, targets)

    model, before, after = SeenByForward(small_bn_cnn()), Recorder(order=0), Recorder(order=100)
    fit(model, [before, Replace(), after], loss_fn=loss_fn)
    assert len(model.seen) == len(losses) == len(after.batches) == 8
    for (images, labels, _), seen, soft, (inputs, targets, _), (end_in, end_t) in zip(
        before.batches, model.seen, losses, after.batches, after.at_end, strict=True
    ):
        assert torch.equal(seen, images.flip(0) * 2) and torch.equal(inputs, seen) and torch.equal(end_in, seen)
        assert torch.equal(soft, nn.functional.one_hot(labels.flip(0), 3).float())
        assert torch.equal(targets, soft) and torch.equal(end_t, soft)


@pytest.mark.parametrize(
    ("options", "reference"),
    [
        ({"mixup_alpha": 0.4, "cutmix_alpha": None}, lambda: v2.MixUp(alpha=0.4, num_classes=3)),
        ({"mixup_alpha": None, "cutmix_alpha": 1.0}, lambda: v2.CutMix(alpha=1.0, num_classes=3)),
        (
            {"mixup_alpha": 0.2, "cutmix_alpha": 1.0, "p": 0.7, "switch_prob": 0.3},
            lambda: v2.RandomApply(
                [
                    v2.RandomChoice(
                        [v2.MixUp(alpha=0.2, num_classes=3), v2.CutMix(alpha=1.0, num_classes=3)], [0.7, 0.3]
                    )
                ],
                p=0.7,
            ),
        ),
    ],
    ids=["mixup", "cutmix", "both-p0.7-switch0.3"],
)
def test_mixed_batches_equal_torchvision_for_the_same_rng(options, reference):
    model, before, after = SeenByForward(small_bn_cnn()), Recorder(order=0), Recorder(order=100)
    fit(model, [before, MixUpCutMix(**options), after], epochs=2)
    transform = reference()
    for (images, labels, rng), (mixed, soft, _), seen in zip(before.batches, after.batches, model.seen, strict=True):
        torch.set_rng_state(rng)
        expected_images, expected_targets = transform(images, labels)
        assert torch.equal(mixed, expected_images) and torch.equal(soft, expected_targets)
        assert torch.equal(seen, expected_images)  # what the model was called with
    clean = sum(soft.ndim == 1 for _, soft, _ in after.batches)
    assert len(after.batches) == 16
    assert (0 < clean < 16) if "p" in options else clean == 0  # p < 1 leaves some batches clean
    assert all(torch.allclose(soft.sum(1), torch.ones(8)) for _, soft, _ in after.batches if soft.ndim == 2)


def test_mixing_stops_at_stop_epoch_and_train_accuracy_uses_the_hard_labels():
    class Accuracies(Callback):
        order = 200

        def __init__(self, mix: MixUpCutMix) -> None:
            self.mix, self.hits, self.logged, self.expected = mix, [], [], []

        def on_train_batch_end(self, trainer: Trainer) -> None:
            self.hits.append((trainer.last_outputs.argmax(1) == self.mix.hard_targets).float())
            if trainer.state.is_log_step:
                self.logged.append(trainer.state.metrics["train/accuracy"])
                self.expected.append(float(torch.cat(self.hits).mean()))
                self.hits = []

    mix, before = MixUpCutMix(p=1.0, stop_epoch=1), Recorder(order=0)
    after, check = Recorder(order=100), Accuracies(mix)
    fit(small_bn_cnn(), [before, mix, after, check], epochs=2, log_every_n_steps=4)
    soft = [t.ndim == 2 for _, t, _ in after.batches]
    assert soft == [True] * 8 + [False] * 8  # epoch 0 mixed, epoch 1 clean
    assert all(torch.equal(a[1], b[1]) for a, b in zip(before.batches[8:], after.batches[8:], strict=True))
    assert len(check.logged) == 4 and check.logged == pytest.approx(check.expected, abs=1e-12)


def test_mixing_reads_nothing_from_the_device_on_non_logging_steps():
    model = small_bn_cnn()
    trainer = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.05),
        nn.CrossEntropyLoss(label_smoothing=0.1),
        callbacks=[MixUpCutMix(p=0.8)],
        seed=0,
        log_every_n_steps=4,
        progress_bar=False,
    )
    steps = syncs_per_step(trainer, mix_loaders()[0], epochs=2)
    quiet = [events for is_log, events in steps if not is_log]
    logged = [events for is_log, events in steps if is_log]
    assert len(quiet) == 12 and len(logged) == 4
    # Only torchvision's draws of lambda, the box and the choices, which live on the CPU by design.
    places = {event.split(" at ")[1].rsplit(":", 1)[0] for events in quiet for event in events}
    reads = {place.split("site-packages/")[-1] for place in places}  # CI's venv lies inside the checkout
    assert reads <= {"torchvision/transforms/v2/_augment.py", "torchvision/transforms/v2/_container.py"}, reads
    assert all(any("callbacks/mix.py" in e for e in events) for events in logged)  # train/accuracy, at log steps


# ------------------------------------------------------------------------------ soft targets elsewhere
def test_accuracy_and_confusion_matrix_read_soft_targets_as_their_most_likely_class(tmp_path):
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(40, 4, generator=g), torch.randint(4, (40,), generator=g)
    soft = v2.MixUp(alpha=0.4, num_classes=4)(torch.zeros(40, 1, 2, 2), labels)[1]
    assert soft.ndim == 2
    truth = soft.argmax(1).numpy()
    assert float(accuracy(logits, soft)) == pytest.approx(accuracy_score(truth, logits.argmax(1).numpy()))
    assert float(accuracy(logits, labels)) == pytest.approx(accuracy_score(labels.numpy(), logits.argmax(1).numpy()))
    assert float(accuracy(torch.tensor([2.0, -1.0, 0.5]), torch.tensor([0.9, 0.2, 0.4]))) == pytest.approx(2 / 3)

    class Stub:  # what ConfusionMatrix reads of a trainer at a validation batch
        last_outputs, last_targets, loss_fn, is_main_process = logits, soft, nn.CrossEntropyLoss(), True
        state = TrainState(stage="validate", validation_prefix="val")

    matrix = ConfusionMatrix(class_names=list("abcd"))
    matrix.on_validation_start(Stub())
    matrix.on_validation_batch_end(Stub())
    counts = matrix.counts[:-1].view(4, 4).numpy()
    assert (counts == confusion_matrix(truth, logits.argmax(1).numpy(), labels=range(4))).all()


def test_gradcam_titles_soft_targets_by_their_most_likely_class():
    cam = GradCAM(num_images=4, class_names=list("abc"))
    images, labels = torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 2, 1])
    cams, probs = torch.rand(4, 16, 16), torch.softmax(torch.randn(4, 3), 1)
    soft = nn.functional.one_hot(labels, 3).float() * 0.7 + 0.1
    assert torch.equal(cam.tiles(images, soft, cams, probs), cam.tiles(images, labels, cams, probs))


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"mixup_alpha": 0.0}, "mixup_alpha must be a finite number > 0"),
        ({"cutmix_alpha": -1.0}, "cutmix_alpha must be a finite number > 0"),
        ({"mixup_alpha": float("nan")}, "mixup_alpha must be a finite number > 0"),
        ({"mixup_alpha": None, "cutmix_alpha": None}, "give at least one of them"),
        ({"p": 1.5}, "p is a probability"),
        ({"switch_prob": -0.1}, "switch_prob is a probability"),
        ({"stop_epoch": 0}, "stop_epoch=0 would never mix"),
        ({"p": 0.0}, "p is 0: no batch would ever be mixed"),
        ({"num_classes": 1}, "num_classes must be at least 2"),
    ],
)
def test_bad_options_are_refused_at_construction(options, message):
    with pytest.raises(AugmentationError, match=message):
        MixUpCutMix(**options)


def _refused_before_any_forward(model: nn.Module, dataset, mix: MixUpCutMix, message: str) -> None:
    seen = SeenByForward(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = Trainer(
        seen, torch.optim.SGD(seen.parameters(), lr=0.1), nn.CrossEntropyLoss(), callbacks=[mix], progress_bar=False
    )
    with pytest.raises(AugmentationError, match=message):
        trainer.fit(DataLoader(dataset, batch_size=4), epochs=1)
    assert seen.seen == [] and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_float_regression_targets_are_refused_before_the_first_forward():
    images = tiny_image_data(8).tensors[0]
    regression = torch.utils.data.TensorDataset(images, torch.randn(8, 3))
    _refused_before_any_forward(small_bn_cnn(), regression, MixUpCutMix(), "mixes class indices .* got torch.float32")


def test_segmentation_masks_are_refused_before_the_first_forward():
    masks = ShapesDataset(8, image_size=16, task="segmentation")
    model = nn.Sequential(nn.Conv2d(3, 7, 1))
    _refused_before_any_forward(model, masks, MixUpCutMix(), r"shape \(4, 16, 16\) \(a segmentation mask\?\)")


def test_inputs_that_are_not_images_are_refused():
    _refused_before_any_forward(
        tiny_mlp(),
        torch.utils.data.TensorDataset(torch.randn(8, 8), torch.randint(3, (8,))),
        MixUpCutMix(),
        r"float image batches \(N, C, H, W\), got \(4, 8\)",
    )


def test_num_classes_that_disagrees_with_the_model_is_refused():
    _refused_before_any_forward(
        small_bn_cnn(), tiny_image_data(8), MixUpCutMix(num_classes=5), "num_classes=5.* model has 3 outputs"
    )
