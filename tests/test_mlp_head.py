"""`--head mlp`: an MLP head on every torchvision family, counted as the head by freezing and param groups."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision
from torch.utils.data import DataLoader, TensorDataset

from callbacks_kit import FreezeUnfreeze, Trainer
from callbacks_kit.cli import main
from callbacks_kit.errors import FinetuneError
from callbacks_kit.finetune import MLPHead, backbone_blocks, build_classifier, head_name, param_groups, replace_head

# One model of each family the project handles (SqueezeNet's 1x1-conv head has no MLP form).
FAMILIES = [
    "resnet18",
    "regnet_y_400mf",
    "shufflenet_v2_x0_5",
    "googlenet",
    "vgg11",
    "alexnet",
    "densenet121",
    "mobilenet_v3_small",
    "mnasnet0_5",
    "efficientnet_b0",
    "convnext_tiny",
    "maxvit_t",
    "vit_b_16",
    "swin_t",
]


@pytest.mark.parametrize("name", FAMILIES)
def test_mlp_head_on_every_family_is_the_head(name: str):
    try:
        with torch.device("meta"):  # no memory, no init cost: only the structure is checked
            model = build_classifier(name, 4, head="mlp", hidden=32, dropout=0.3)
    except NotImplementedError:  # an init that reads values (RegNet's) needs real tensors
        model = build_classifier(name, 4, head="mlp", hidden=32, dropout=0.3)
    head = head_name(model)
    module = model.get_submodule(head)
    assert isinstance(module, MLPHead) and module.out_features == 4 and module.hidden == 32
    assert [type(m).__name__ for m in module] == ["Dropout", "Linear", "BatchNorm1d", "ReLU", "Dropout", "Linear"]
    assert module[0].p == 0.3
    blocks = backbone_blocks(model)
    assert not any(block == head or block.startswith(head + ".") for block in blocks)
    groups = param_groups(model, dict.fromkeys([head, *blocks], 1e-3))  # every parameter in exactly one group
    assert {id(p) for p in module.parameters()} == {id(p) for p in groups[0]["params"]}


def test_mlp_head_refused_for_a_convolution_head():
    with pytest.raises(FinetuneError, match="1x1 convolution.*use head='linear'"):
        build_classifier("squeezenet1_1", 3, head="mlp")


def test_frozen_backbone_trains_the_whole_mlp_head(tmp_path: Path):
    torch.manual_seed(0)
    model = build_classifier("resnet18", 3, head="mlp", hidden=16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = TensorDataset(torch.randn(16, 3, 32, 32), torch.randint(0, 3, (16,)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    trainer = Trainer(
        model, optimizer, torch.nn.CrossEntropyLoss(), callbacks=[FreezeUnfreeze()], cpu=True, progress_bar=False
    )
    trainer.fit(DataLoader(data, batch_size=8), DataLoader(data, batch_size=8), epochs=1)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    head = {k for k in before if k.startswith("fc.")}
    assert {"fc.1.weight", "fc.2.weight", "fc.2.running_mean", "fc.5.weight"} <= changed
    assert changed <= head  # the backbone is bit-identical, BatchNorm statistics included


def test_train_and_export_with_an_mlp_head(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    run = tmp_path / "run"
    args = ["--epochs", "1", "--train-samples", "32", "--val-samples", "16", "--batch-size", "16"]
    args += ["--image-size", "32", "--no-progress", "--no-inspection", "--head", "mlp", "--hidden", "24"]
    assert main(["train", *args, "--log-dir", str(run)]) == 0
    info = json.loads((run / "run.json").read_text())
    assert (info["head"], info["hidden"], info["dropout"]) == ("mlp", 24, 0.2)
    assert main(["export", str(run), "--format", "state_dict", "--output", str(tmp_path / "m.pth")]) == 0
    assert "largest difference from the PyTorch model 0" in capsys.readouterr().out
    # What a user writes without callbacks_kit's builder: torchvision's model, the head rebuilt from run.json.
    plain = torchvision.models.get_model("resnet18", num_classes=6)
    replace_head(plain, 6, "mlp", info["hidden"], info["dropout"])
    plain.load_state_dict(torch.load(tmp_path / "m.pth", weights_only=True))
    assert main(["train", *args, "--head", "linear", "--log-dir", str(tmp_path / "x")]) == 2
    assert "--hidden and --dropout shape the MLP head: add --head mlp" in capsys.readouterr().err
