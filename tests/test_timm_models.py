"""timm models (`--model timm/<name>`): build, freeze and unfreeze their blocks, train, load local weights."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import timm
import torch
from torch.utils.data import DataLoader, TensorDataset

from callbacks_kit import Callback, FreezeUnfreeze, Trainer
from callbacks_kit.cli import main
from callbacks_kit.deploy import load_run_model
from callbacks_kit.errors import FinetuneError
from callbacks_kit.finetune import backbone_blocks, build_classifier, head_name


def test_timm_model_head_blocks_and_local_weights(tmp_path: Path):
    torch.manual_seed(1)
    source = timm.create_model("resnet18", pretrained=False)  # its 1000-class head is replaced on load
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")
    model = build_classifier("timm/resnet18", 5, weights=tmp_path / "resnet18.pth")
    assert head_name(model) == "fc" and model.fc.out_features == 5 and model.num_classes == 5
    assert backbone_blocks(model) == ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4"]
    assert torch.equal(model.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    vit = build_classifier("timm/vit_tiny_patch16_224", 3, head="mlp", hidden=8)
    assert head_name(vit) == "head" and vit.head.out_features == 3


def test_gradual_unfreezing_of_timm_blocks():
    model = build_classifier("timm/resnet18", 3)
    snapshots: list[dict[str, torch.Tensor]] = []

    class Snapshot(Callback):
        def on_epoch_end(self, trainer: Trainer) -> None:
            snapshots.append({k: v.clone() for k, v in model.state_dict().items()})

    start = {k: v.clone() for k, v in model.state_dict().items()}
    data = TensorDataset(torch.randn(8, 3, 16, 16), torch.randint(0, 3, (8,)))
    freeze = FreezeUnfreeze(unfreeze_at=[1, 2])
    trainer = Trainer(
        model,
        torch.optim.AdamW(model.parameters(), lr=1e-2),
        torch.nn.CrossEntropyLoss(),
        callbacks=[freeze, Snapshot()],
        cpu=True,
        progress_bar=False,
    )
    trainer.fit(DataLoader(data, batch_size=4), DataLoader(data, batch_size=4), epochs=3)
    assert freeze.stages == [(1, ["layer4"]), (2, ["conv1", "bn1", "layer1", "layer2", "layer3"])]

    def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], prefix: str) -> bool:
        return any(not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix))

    assert changed(start, snapshots[0], "fc.") and not changed(start, snapshots[0], "layer4.")
    assert changed(snapshots[0], snapshots[1], "layer4.") and not changed(snapshots[0], snapshots[1], "layer1.")
    assert changed(snapshots[1], snapshots[2], "layer1.") and changed(snapshots[1], snapshots[2], "conv1.")


def test_timm_model_trains_an_epoch_from_the_cli(tmp_path: Path):
    args = ["--epochs", "1", "--train-samples", "32", "--val-samples", "16", "--batch-size", "16", "--image-size", "32"]
    assert (
        main(
            ["train", *args, "--no-progress", "--no-inspection", "--model", "timm/resnet18", "--log-dir", str(tmp_path)]
        )
        == 0
    )
    assert json.loads((tmp_path / "run.json").read_text())["model"] == "timm/resnet18"
    model, info = load_run_model(tmp_path)
    assert type(model).__module__.startswith("timm.") and info.num_classes == 6


def test_unknown_timm_name_and_missing_timm(monkeypatch: pytest.MonkeyPatch):
    with pytest.raises(FinetuneError, match="unknown timm model 'resnet81'; closest: timm/resnet18"):
        build_classifier("timm/resnet81", 3)
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(FinetuneError, match=r'pip install "callbacks-kit\[timm\]"'):
        build_classifier("timm/resnet18", 3)
