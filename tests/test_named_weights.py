"""`--weights DEFAULT`: torchvision's named weights from the local torch hub cache, with no network."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torchvision

from callbacks_kit.cli import main
from callbacks_kit.errors import FinetuneError
from callbacks_kit.finetune import build_classifier, cached_weights


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary TORCH_HOME and no network: any connection attempt fails the test."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the network was used")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_default_weights_load_from_the_cache_offline(offline_hub: Path, capsys: pytest.CaptureFixture[str]):
    # A real resnet18 state_dict under the file name torchvision's enum downloads to (the hash suffix
    # in the name is only checked when downloading, so a cached file is read as it is).
    torch.manual_seed(3)
    source = torchvision.models.resnet18()
    expected = offline_hub / Path(torchvision.models.ResNet18_Weights.DEFAULT.url).name
    offline_hub.mkdir(parents=True)
    torch.save(source.state_dict(), expected)
    assert cached_weights("resnet18", "DEFAULT") == expected
    model = build_classifier("resnet18", 3, weights="IMAGENET1K_V1")
    for key, value in source.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(model.state_dict()[key], value), key
    assert model.fc.out_features == 3
    # The main job loads them the same way; --init-from of a missing file then stops it before any training.
    log_dir = offline_hub.parent.parent.parent / "run"
    assert main(["train", "--weights", "DEFAULT", "--init-from", "missing", "--log-dir", str(log_dir)]) == 2
    out = capsys.readouterr()
    assert f"weights DEFAULT ({expected}): loaded {len(source.state_dict())} tensors\n" in out.out
    assert "--init-from missing: no such checkpoint" in out.err


def test_missing_cache_file_names_the_path_and_the_download(offline_hub: Path, capsys: pytest.CaptureFixture[str]):
    expected = offline_hub / "resnet18-f37072fd.pth"
    with pytest.raises(FinetuneError, match="not in the torch hub cache") as info:
        build_classifier("resnet18", 3, weights="DEFAULT")
    assert str(expected) in str(info.value)
    assert "torchvision.models.get_model('resnet18', weights='IMAGENET1K_V1')" in str(info.value)
    assert main(["train", "--weights", "DEFAULT", "--log-dir", str(offline_hub / "run")]) == 2
    assert str(expected) in capsys.readouterr().err
    assert not (offline_hub / "run").exists()  # refused before anything was written


def test_unknown_weight_names_and_models_without_an_enum():
    with pytest.raises(
        FinetuneError, match="ResNet18_Weights has no such weights; choose one of IMAGENET1K_V1, DEFAULT"
    ):
        build_classifier("resnet18", 3, weights="IMAGENET1K_V9")
    with pytest.raises(FinetuneError, match="named weights are torchvision's; for timm/resnet18 pass a local"):
        build_classifier("timm/resnet18", 3, weights="DEFAULT")
