"""Nonsense options refused, one-line errors instead of tracebacks, and right words."""

from __future__ import annotations

import warnings

import pytest
import torch
import torchvision
from helpers.tiny import tiny_classification_data, tiny_mlp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from callbacks_kit import Callback, EarlyStopping, TensorBoardLogger, TerminateOnNaN, Trainer
from callbacks_kit.callbacks.grad_cam import GradCAM
from callbacks_kit.cli import main
from callbacks_kit.data import ShapesDataset
from callbacks_kit.errors import CallbackError, NonFiniteError, TrainerError

TINY = ["--epochs", "1", "--train-samples", "32", "--val-samples", "16", "--batch-size", "16", "--image-size", "32",
        "--no-progress", "--model", "resnet18"]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        # class 9: accepted nonsense
        (["--image-size", "0"], "--image-size must be at least 16 pixels, got 0"),
        (["--backbone-lr-factor", "nan", "--unfreeze-at", "0"], "--backbone-lr-factor must be a finite number"),
        (["--backbone-lr-factor", "0", "--unfreeze-at", "0"], "--backbone-lr-factor must be greater than 0"),
        (["--val-split", "0.3"], "--val-split sets the share of --data held out for validation; it needs --data"),
        (["--data", "."], "--train-samples and --val-samples size the built-in shapes dataset; with --data"),
        (["--max-grad-norm", "inf"], "--max-grad-norm must be a finite number"),
        (["--hist-include", "no_such_parameter"], "matches none of the model's 62 parameters"),
        # class 10: tracebacks before training
        (["--lr", "nan"], "--lr must be a finite number, got nan"),
        (["--lr", "inf"], "--lr must be a finite number, got inf"),  # class 11: it named a checkpoint, not the LR
        (["--weight-decay", "-1"], "--weight-decay must be at least 0, got -1"),
        (["--weight-decay", "nan"], "--weight-decay must be a finite number"),
        (["--seed", "-1"], "--seed must be between 0 and 4294967295, got -1"),
        (["--workers", "-1"], "--workers must be at least 0, got -1"),
        (["--hist-include", "conv("], "is not a valid regular expression"),
        # batches of one sample: resnet18's layer4 is 1x1 at 32 px, where BatchNorm sees one value per channel
        (
            ["--batch-size", "1"],
            "every batch of train_loader holds 1 sample (batch_size 1; --batch-size), and BatchNorm",
        ),
    ],
)
def test_bad_options_are_one_line_naming_the_flag(tmp_path, capsys, args, message):
    assert main(["train", *TINY, "--log-dir", str(tmp_path / "run"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_a_log_dir_that_is_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["train", *TINY, "--log-dir", str(tmp_path / "file")]) == 2
    err = capsys.readouterr().err
    assert f"--log-dir {tmp_path / 'file'} cannot hold a run" in err and err.count("\n") == 1


def test_a_model_whose_input_size_does_not_fit_is_one_line(tmp_path, capsys):
    assert main(["train", *TINY, "--model", "vit_b_16", "--log-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "the first batch fails in the model or the loss" in err and "(16, 3, 32, 32) float32" in err
    assert "--image-size" in err and err.count("\n") == 1


class TupleModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_mlp()

    def forward(self, x):
        return self.net(x), x


class DictModel(TupleModel):
    def forward(self, x):
        return {"logits": self.net(x)}


def _fit(model, data):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = Trainer(model, optimizer, nn.CrossEntropyLoss(), cpu=True, progress_bar=False)
    trainer.fit(DataLoader(data, batch_size=8), epochs=1)


@pytest.mark.parametrize("model", [TupleModel, DictModel])
def test_a_model_returning_a_tuple_or_dict_with_a_loss_fn(model):
    with pytest.raises(
        TrainerError, match=r"The model returns (a tuple of 2|\{'logits': \(8, 3\) float32\}), not a tensor"
    ):
        _fit(model(), tiny_classification_data(16))


def test_targets_out_of_range():
    data = TensorDataset(torch.randn(16, 8), torch.full((16,), 5))
    with pytest.raises(TrainerError, match="Targets must be class indices from 0 to the number of outputs - 1"):
        _fit(tiny_mlp(), data)


def test_float64_inputs():
    data = TensorDataset(torch.randn(16, 8, dtype=torch.float64), torch.zeros(16, dtype=torch.long))
    with pytest.raises(TrainerError, match=r"inputs \(8, 8\) float64.*dtype must match the model's"):
        _fit(tiny_mlp(), data)


# ------------------------------------------------------------------------------ class 11: wrong words
def test_a_callback_class_instead_of_an_instance():
    model = tiny_mlp()
    with pytest.raises(CallbackError, match=r"EarlyStopping is a Callback class, not a callback; pass an instance"):
        Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), callbacks=[EarlyStopping])


def test_terminate_on_nan_without_a_checkpoint_does_not_promise_one_and_names_the_lr():
    model = tiny_mlp()
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=float("inf")), nn.CrossEntropyLoss(), cpu=True,
                      callbacks=[TerminateOnNaN()], progress_bar=False, log_every_n_steps=1)  # fmt: skip
    with pytest.raises(NonFiniteError) as caught:
        trainer.fit(DataLoader(tiny_classification_data(32), batch_size=8), epochs=1)
    message = str(caught.value)
    assert "No checkpoint was saved" in message and "resume from it" not in message
    assert "learning rate (now inf; --lr)" in message


def test_a_gradcam_layer_that_cannot_work_warns_at_fit_start(tmp_path):
    class FirstBatch(Callback):
        def on_train_batch_start(self, trainer) -> None:
            self.seen = self.seen if hasattr(self, "seen") else [str(w.message) for w in caught]

    model = torchvision.models.resnet18(num_classes=6)
    first = FirstBatch()
    callbacks = [TensorBoardLogger(tmp_path), GradCAM("fc", num_images=2), first]
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.01), nn.CrossEntropyLoss(), cpu=True,
                      callbacks=callbacks, progress_bar=False)  # fmt: skip
    loader = DataLoader(ShapesDataset(16, 32), batch_size=8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(loader, loader, epochs=1)
    assert any("GradCAM: layer 'fc' gives no (N, C, H, W) map" in m for m in first.seen)
