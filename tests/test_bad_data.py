"""Bad image files, a ragged last batch, fewer than two classes."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.tiny import small_bn_cnn
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from callbacks_kit import Trainer
from callbacks_kit.cli import main
from callbacks_kit.data import image_folder_datasets, load_image
from callbacks_kit.errors import TrainerError

CLASSES = ("circle", "square", "star")
RUN = ["--epochs", "1", "--image-size", "32", "--batch-size", "8", "--workers", "0", "--no-progress",
       "--no-inspection", "--model", "resnet18"]  # fmt: skip


def _tree(root: Path, parts: tuple[str, ...] = ("train", "val"), classes: tuple[str, ...] = CLASSES) -> None:
    rng = np.random.default_rng(0)
    for part in parts:
        for name in classes:
            folder = root / part / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(4):
                pixels = (rng.random((40, 40, 3)) * 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# ------------------------------------------------------------------------------ class 2: bad images
def test_bad_images_in_the_val_split_are_skipped_with_their_names(tmp_path, recwarn, capsys):
    _tree(tmp_path / "data")
    bad_png = tmp_path / "data" / "val" / "star" / "0.png"
    _truncate(bad_png)
    text = tmp_path / "data" / "val" / "circle" / "notes.jpg"
    text.write_text("not an image")
    empty = tmp_path / "data" / "train" / "square" / "empty.png"
    empty.write_bytes(b"")
    assert main(["train", "--data", str(tmp_path / "data"), *RUN, "--log-dir", str(tmp_path / "run")]) == 0
    messages = " ".join(str(w.message) for w in recwarn)
    assert "skipping 3 unreadable image(s)" in messages
    for path in (bad_png, text, empty):
        assert str(path) in messages
    assert (tmp_path / "run" / "checkpoints" / "last.json").exists()


def test_an_image_damaged_past_its_header_is_skipped_at_load_time(tmp_path):
    _tree(tmp_path / "data")
    jpeg = tmp_path / "data" / "val" / "star" / "broken.jpg"
    Image.fromarray((np.random.default_rng(1).random((64, 64, 3)) * 255).astype(np.uint8)).save(jpeg)
    _truncate(jpeg)  # the header is fine, the pixels are cut off
    _, val, _ = image_folder_datasets(tmp_path / "data", 32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        images = [val[i][0] for i in range(len(val))]
    assert all(image.shape == (3, 32, 32) for image in images)
    assert any(str(jpeg) in str(w.message) and "skipped unreadable image" in str(w.message) for w in caught)


@pytest.mark.parametrize("mode", ["I;16", "I", "F", "LA", "P", "CMYK", "1", "RGBA"])
def test_images_of_every_pil_mode_load_without_saturating(tmp_path, mode):
    ramp = np.linspace(0, 1, 64 * 64).reshape(64, 64)
    if mode == "I;16":
        image = Image.fromarray((ramp * 65535).astype(np.uint16))
    elif mode == "I":
        image = Image.fromarray((ramp * 65535).astype(np.int32))
    elif mode == "F":
        image = Image.fromarray(ramp.astype(np.float32))
    else:
        image = Image.fromarray((ramp * 255).astype(np.uint8)).convert(mode)
    path = tmp_path / ("x.tiff" if mode in ("F", "CMYK", "I") else "x.png")
    image.save(path)
    loaded = np.asarray(load_image(path), dtype=np.float64)
    assert loaded.shape == (64, 64, 3)
    if mode not in ("1",):
        assert 100 < loaded.mean() < 155, f"{mode}: mean {loaded.mean()}"  # a ramp, not white or black


# ------------------------------------------------------------------------------ class 3: ragged batch
def test_a_last_training_batch_of_one_sample_does_not_crash_the_main_job(tmp_path, capsys):
    args = ["train", "--train-samples", "129", "--val-samples", "32", "--image-size", "32", "--batch-size", "64",
            "--epochs", "1", "--no-progress", "--no-inspection", "--log-dir", str(tmp_path / "run")]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    assert (tmp_path / "run" / "checkpoints" / "last.json").exists()


def test_a_trainer_refuses_a_one_sample_last_batch_with_batchnorm_before_training():
    data = TensorDataset(torch.randn(17, 3, 8, 8), torch.randint(0, 3, (17,)))
    model = small_bn_cnn()
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), torch.nn.CrossEntropyLoss(), cpu=True)
    with pytest.raises(TrainerError, match=r"last batch holds 1 sample \(17 samples, batch_size 8\).*drop_last=True"):
        trainer.fit(DataLoader(data, batch_size=8), epochs=1)
    assert trainer.state.global_step == 0
    trainer.fit(DataLoader(data, batch_size=8, drop_last=True), epochs=1)  # the fix it names works


def test_batches_of_one_sample_are_refused_where_a_batchnorm_would_see_one_value_per_channel():
    # small_bn_cnn's BatchNorm2d layers see one sample's whole map: 1 value at 1x1, 16 at 4x4 (which trains).
    for size in (1, 4):
        data = TensorDataset(torch.randn(4, 3, size, size), torch.randint(0, 3, (4,)))
        model = small_bn_cnn()
        trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), torch.nn.CrossEntropyLoss(), cpu=True,
                          progress_bar=False)  # fmt: skip
        if size == 1:
            with pytest.raises(TrainerError, match=r"every batch of train_loader holds 1 sample \(batch_size 1; "
                               r"--batch-size\), and BatchNorm layers stem.1, block.1 see a single value"):  # fmt: skip
                trainer.fit(DataLoader(data, batch_size=1), epochs=1)
            assert trainer.state.global_step == 0
        else:
            trainer.fit(DataLoader(data, batch_size=1), epochs=1)
            assert trainer.state.global_step == 4
    mlp = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.Linear(16, 3))
    trainer = Trainer(mlp, torch.optim.SGD(mlp.parameters(), lr=0.1), torch.nn.CrossEntropyLoss(), cpu=True)
    one = TensorDataset(torch.randn(1, 8), torch.zeros(1, dtype=torch.long))
    with pytest.raises(TrainerError, match=r"train_loader holds 1 sample in all .* BatchNorm layer 1 sees"):
        trainer.fit(DataLoader(one, batch_size=8), epochs=1)


def test_a_val_split_that_leaves_one_training_image_is_one_line(tmp_path, capsys):
    _tree(tmp_path / "data", parts=("",))
    images = len(list((tmp_path / "data").rglob("*.png")))
    split = str(1 - 1.4 / images)  # one image left to train on
    assert main(["train", "--data", str(tmp_path / "data"), "--val-split", split, *RUN,
                 "--log-dir", str(tmp_path / "run")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "train_loader holds 1 sample in all (--train-samples, --val-split), and BatchNorm layers" in err
    assert "Traceback" not in err and err.count("\n") == 1


# ------------------------------------------------------------------------------ class 4: classes
def test_a_single_class_folder_is_refused_before_training(tmp_path, capsys):
    _tree(tmp_path / "data", parts=("",), classes=("cats",))
    assert main(["train", "--data", str(tmp_path / "data"), *RUN, "--log-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "1 class folder(s) (cats)" in err and "at least 2" in err


def test_a_train_folder_without_val_is_recognised(tmp_path, capsys):
    _tree(tmp_path / "data", parts=("train",))
    assert main(["train", "--data", str(tmp_path / "data"), *RUN, "--log-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "has train/ but no val/" in err and "add" in err and str(tmp_path / "data" / "val") in err
