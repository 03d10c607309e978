"""`callbacks-kit train` with --augment, --no-flip, --mixup/--cutmix and --label-smoothing."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
from test_cli import TINY, TINY_DATA, write_image_folder
from torchvision.transforms import v2

from callbacks_kit import Callback, MixUpCutMix, Trainer
from callbacks_kit.cli import main
from callbacks_kit.cli.parser import add_train
from callbacks_kit.cli.train import train
from callbacks_kit.data import augmentation, base_dataset, eval_transform


class Seen(Exception):
    """Ends a run once the test has what it looks at (no checkpoint is written on the way out)."""


class FirstStep(Callback):
    """Keeps the trainer and the first training batch as the forward got it, then ends the run."""

    order = 1000

    def on_train_batch_end(self, trainer: Trainer) -> None:
        self.trainer, self.targets = trainer, trainer.last_targets
        raise Seen


def parse(*flags: str) -> argparse.Namespace:
    commands = argparse.ArgumentParser().add_subparsers()
    add_train(commands)
    return commands.choices["train"].parse_args([*flags, "--no-inspection", "--log-every", "1"])


def run_one_step(*flags: str) -> FirstStep:
    first = FirstStep()
    with pytest.raises(Seen):
        train(parse(*flags), customize=lambda callbacks: [*callbacks, first])
    return first


def kinds(transform: v2.Compose) -> list[type]:
    return [type(t) for t in transform.transforms]


def test_shapes_with_the_whole_recipe(tmp_path: Path):
    flags = ["--mixup", "0.2", "--cutmix", "1.0", "--label-smoothing", "0.1", "--augment", "trivialaugment"]
    first = run_one_step(*TINY, "--log-dir", str(tmp_path / "run"), *flags)
    trainer = first.trainer
    assert isinstance(trainer.loss_fn, torch.nn.CrossEntropyLoss) and trainer.loss_fn.label_smoothing == 0.1
    (mix,) = trainer.callbacks.find(MixUpCutMix)
    assert (mix.mixup_alpha, mix.cutmix_alpha, mix.classes) == (0.2, 1.0, 6)
    assert first.targets.shape == (16, 6) and first.targets.dtype == torch.float32  # mixed, soft
    assert 0 <= trainer.state.metrics["train/accuracy"] <= 1
    train_set, val_set = base_dataset(trainer.train_loader.dataset), base_dataset(trainer.val_loader.dataset)
    assert kinds(train_set.transform) == [v2.RandomResizedCrop, v2.RandomHorizontalFlip, v2.TrivialAugmentWide]
    assert val_set.transform is None  # validation images are never augmented


def test_shapes_default_stays_unaugmented(tmp_path: Path):
    class Look(Callback):
        def on_fit_start(self, trainer: Trainer) -> None:
            assert base_dataset(trainer.train_loader.dataset).transform is None
            assert trainer.loss_fn.label_smoothing == 0.0 and not trainer.callbacks.find(MixUpCutMix)
            raise Seen

    with pytest.raises(Seen):
        train(parse(*TINY, "--log-dir", str(tmp_path / "run")), customize=lambda callbacks: [*callbacks, Look()])


def test_image_folder_with_randaugment_and_no_flip(tmp_path: Path):
    write_image_folder(tmp_path / "data")
    flags = [*TINY_DATA, "--data", str(tmp_path / "data"), "--workers", "0", "--log-dir", str(tmp_path / "run")]
    first = run_one_step(*flags, "--augment", "randaugment", "--no-flip", "--cutmix", "1.0")
    train_set = base_dataset(first.trainer.train_loader.dataset)
    val_set = base_dataset(first.trainer.val_loader.dataset)
    assert kinds(train_set.transform) == [
        v2.ToImage, v2.RandomResizedCrop, v2.RandAugment, v2.ToDtype, v2.Normalize
    ]  # fmt: skip
    assert kinds(val_set.transform) == kinds(eval_transform(32))
    assert first.targets.shape[1] == 6


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("none", []),
        ("basic", [v2.RandomResizedCrop, v2.RandomHorizontalFlip]),
        ("autoaugment", [v2.RandomResizedCrop, v2.RandomHorizontalFlip, v2.AutoAugment]),
    ],
)
def test_augmentation_names(name, expected):
    assert [type(t) for t in augmentation(32, name)] == expected
    assert v2.RandomHorizontalFlip not in [type(t) for t in augmentation(32, name, flip=False)]


def test_an_unknown_augment_name_is_an_argparse_choices_error(tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", *TINY, "--augment", "cutout"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--augment: invalid choice: 'cutout'" in err and "trivialaugment" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mixup", "0"], "--mixup must be a finite number > 0"),
        (["--cutmix", "-1"], "--cutmix must be a finite number > 0"),
        (["--mixup", "0.2", "--mix-prob", "2"], "--mix-prob is a probability: it must be within [0, 1], got 2.0"),
        (["--mixup", "0.2", "--mix-prob", "0"], "--mix-prob is 0: no batch would ever be mixed; give the share"),
        (["--mixup", "0.2", "--mix-stop-epoch", "0"], "--mix-stop-epoch=0 would never mix"),  # refused alike
        (["--mix-prob", "0.5"], "--mix-prob set how batches are mixed: add --mixup ALPHA and/or --cutmix ALPHA"),
        (["--mixup", "0.2", "--mix-stop-epoch", "1"], "--mix-stop-epoch 1 is not before --epochs 1"),
        (["--label-smoothing", "1"], "--label-smoothing must be at least 0 and below 1"),
        (["--label-smoothing", "nan"], "--label-smoothing must be at least 0 and below 1"),
        (["--augment", "none", "--no-flip"], "--no-flip removes the flip of --augment"),
    ],
)
def test_bad_recipe_options_are_one_line_naming_the_flag(tmp_path, capsys, args, message):
    assert main(["train", *TINY, "--log-dir", str(tmp_path / "run"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()  # refused before anything was written
