"""Partial weight loads are reported, and refused when most of the file does not fit."""

from __future__ import annotations

import pytest
import torch
import torchvision

from callbacks_kit.cli import main
from callbacks_kit.errors import FinetuneError
from callbacks_kit.finetune import build_classifier, load_weights

TINY = ["--epochs", "1", "--train-samples", "32", "--val-samples", "16", "--batch-size", "16", "--image-size", "32",
        "--no-progress", "--no-inspection", "--model", "resnet18"]  # fmt: skip


@pytest.fixture(scope="module")
def resnet34_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "resnet34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), path)
    return path


def test_resnet34_weights_in_a_resnet18_are_refused_naming_the_override(tmp_path, capsys, resnet34_weights):
    assert main(["train", *TINY, "--weights", str(resnet34_weights), "--log-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "only partly fits ResNet" in err and "96 of its 218 tensors are unused" in err
    assert "--allow-partial-weights" in err


def test_the_override_loads_the_matching_part_and_prints_the_report(tmp_path, capsys, resnet34_weights):
    args = ["train", *TINY, "--weights", str(resnet34_weights), "--allow-partial-weights"]
    assert main([*args, "--log-dir", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert f"weights {resnet34_weights}: loaded 122 tensors; unexpected: " in out


def test_a_fitting_file_loads_with_its_report_and_a_library_user_may_allow_partial(tmp_path, resnet34_weights):
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    lines: list[str] = []
    build_classifier("resnet18", 3, path, report=lines.append)
    assert lines == [f"weights {path}: loaded 122 tensors"]
    with pytest.raises(FinetuneError, match="allow_partial=True"):
        load_weights(torchvision.models.resnet18(weights=None), resnet34_weights, allow_partial=False)
    report = load_weights(
        torchvision.models.resnet18(weights=None), resnet34_weights
    )  # the default keeps 0.1's behaviour
    assert len(report.unexpected) == 96


def test_weights_pointing_at_a_folder_say_so(tmp_path, capsys):
    assert main(["train", *TINY, "--weights", str(tmp_path), "--log-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "is a folder, not a file" in err and "does not exist" not in err
