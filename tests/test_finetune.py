"""Fine-tuning helpers on real torchvision models with small inputs."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.data import Subset
from torchvision import models
from torchvision.models.convnext import CNBlockConfig

from callbacks_kit.finetune import (
    FinetuneError,
    backbone_blocks,
    freeze,
    head_name,
    idx_to_class,
    load_weights,
    param_groups,
    replace_head,
    unfreeze,
)


def small(name):
    """Small instances of the big families (same classes and head layout), the rest by name."""
    if name == "vit":
        return models.VisionTransformer(
            image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32
        )
    if name == "swin":
        return models.SwinTransformer(
            patch_size=[4, 4], embed_dim=8, depths=[1, 1], num_heads=[1, 1], window_size=[2, 2]
        )
    if name == "convnext":
        return models.ConvNeXt([CNBlockConfig(8, 16, 1), CNBlockConfig(16, None, 1)])
    if name == "maxvit":
        return models.MaxVit(
            (64, 64),
            stem_channels=8,
            partition_size=2,
            block_channels=[8],
            block_layers=[1],
            head_dim=4,
            stochastic_depth_prob=0.0,
        )
    kwargs = {"aux_logits": True, "init_weights": False} if name in ("googlenet", "inception_v3") else {}
    return models.get_model(name, weights=None, **kwargs)


# (model, expected head, input size)
FAMILIES = [
    ("resnet18", "fc", 32),
    ("regnet_x_400mf", "fc", 32),
    ("shufflenet_v2_x0_5", "fc", 32),
    ("googlenet", "fc", 64),
    ("inception_v3", "fc", 75),
    ("vgg11", "classifier.6", 32),
    ("alexnet", "classifier.6", 64),
    ("densenet121", "classifier", 32),
    ("mobilenet_v2", "classifier.1", 32),
    ("mobilenet_v3_small", "classifier.3", 32),
    ("mnasnet0_5", "classifier.1", 32),
    ("efficientnet_b0", "classifier.1", 32),
    ("convnext", "classifier.2", 32),
    ("maxvit", "classifier.5", 64),
    ("vit", "heads.head", 32),
    ("swin", "head", 32),
    ("squeezenet1_1", "classifier.1", 64),
]


@pytest.mark.parametrize(("name", "head", "size"), FAMILIES, ids=[f[0] for f in FAMILIES])
def test_replace_head_for_every_family(name, head, size):
    torch.manual_seed(0)
    model = small(name)
    assert head_name(model) == head
    kept = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith(head + ".")}
    new = replace_head(model, 5)
    assert dict(model.named_modules())[head] is new
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, size, size)).shape == (2, 5)
    after = model.state_dict()
    for key, value in kept.items():  # only the heads changed (aux heads are heads too)
        if "aux" not in key.lower():
            assert torch.equal(after[key], value), key
    aux = {"googlenet": ["aux1.fc2", "aux2.fc2"], "inception_v3": ["AuxLogits.fc"]}.get(name, [])
    assert all(dict(model.named_modules())[path].out_features == 5 for path in aux)


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(FinetuneError, match="cannot find the head of Sequential.*model.fc = nn.Linear"):
        replace_head(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)), 3)
    with pytest.raises(FinetuneError, match="positive int"):
        replace_head(models.resnet18(), 0)


def test_backbone_blocks_cover_everything_but_the_head():
    resnet = models.resnet18()
    assert backbone_blocks(resnet) == ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4"]
    efficient = models.efficientnet_b0()
    assert backbone_blocks(efficient) == [f"features.{i}" for i in range(9)]
    vit = small("vit")
    blocks = backbone_blocks(vit)
    assert blocks[0] == "class_token" and "heads" not in " ".join(blocks)
    for model in (resnet, efficient, vit):
        head = head_name(model)
        covered = {
            n for n, _ in model.named_parameters() for b in backbone_blocks(model) if n == b or n.startswith(b + ".")
        }
        assert covered == {n for n, _ in model.named_parameters() if not n.startswith(head + ".")}


def test_freeze_and_unfreeze_modules():
    model = models.resnet18()
    model.train()
    freeze([model.conv1, model.bn1, model.layer1])
    assert not any(p.requires_grad for p in model.layer1.parameters())
    assert not model.bn1.training and not model.layer1[0].bn1.training
    assert all(p.requires_grad for p in model.layer2.parameters())
    unfreeze(model.layer1)
    assert all(p.requires_grad for p in model.layer1.parameters()) and model.layer1[0].bn1.training
    freeze(model.layer2, train_bn=True)
    assert model.layer2[0].bn1.training and model.layer2[0].bn1.weight.requires_grad
    assert not model.layer2[0].conv1.weight.requires_grad
    with pytest.raises(FinetuneError, match="not a name"):
        freeze("layer1")


def test_param_groups_by_module_name():
    model = models.resnet18()
    groups = param_groups(model, {"fc": 1e-2, "layer4": 1e-3, ("layer3", "layer2"): 1e-4}, rest=1e-5, weight_decay=0.05)
    assert [g["name"] for g in groups] == ["fc", "layer4", "layer3+layer2", "rest"]
    assert [g["lr"] for g in groups] == [1e-2, 1e-3, 1e-4, 1e-5]
    assert all(g["weight_decay"] == 0.05 for g in groups)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert groups[0]["params"] == [model.fc.weight, model.fc.bias]
    optimizer = torch.optim.AdamW(groups)  # the optimizer accepts them as they are
    assert len(optimizer.param_groups) == 4


def test_param_groups_without_weight_decay_on_biases_and_norms():
    model = models.resnet18()
    groups = param_groups(model, {"fc": 1e-2}, rest=1e-3, no_decay_bias_and_norm=True)
    names = {g["name"]: g for g in groups}
    assert set(names) == {"fc", "fc/no_decay", "rest", "rest/no_decay"}
    assert names["fc"]["params"] == [model.fc.weight] and names["fc/no_decay"]["params"] == [model.fc.bias]
    no_decay = {id(p) for p in names["rest/no_decay"]["params"]}
    assert id(model.bn1.weight) in no_decay and id(model.layer1[0].bn2.bias) in no_decay
    assert id(model.conv1.weight) not in no_decay
    assert names["rest/no_decay"]["weight_decay"] == 0.0 and "weight_decay" not in names["rest"]
    vit = small("vit")  # LayerNorm parameters count as norms
    ln = {
        id(p)
        for g in param_groups(vit, {}, rest=1.0, no_decay_bias_and_norm=True)
        if "no_decay" in g["name"]
        for p in g["params"]
    }
    assert id(vit.encoder.ln.weight) in ln


def test_param_groups_bad_input():
    model = models.resnet18()
    with pytest.raises(FinetuneError, match="overlap: layer4.1.conv1.weight is in both 'layer4' and 'layer4.1'"):
        param_groups(model, {"layer4": 1e-3, "layer4.1": 1e-4}, rest=1e-5)
    with pytest.raises(FinetuneError, match=r"leave parameters out: conv1.weight, bn1.weight.*rest=<lr>"):
        param_groups(model, {"fc": 1e-3})
    with pytest.raises(FinetuneError, match="no layer or parameter named 'layer5'; closest: .*layer4"):
        param_groups(model, {"layer5": 1e-3}, rest=1e-5)
    with pytest.raises(FinetuneError, match="no layer or parameter named 'fc.weights'; closest: .*fc.weight"):
        param_groups(model, {"fc.weights": 1e-3}, rest=1e-5)
    with pytest.raises(FinetuneError, match="LR of param group 'fc'"):
        param_groups(model, {"fc": "fast"}, rest=1e-5)


def test_idx_to_class_from_an_image_folder(tmp_path):
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        torchvision.utils.save_image(torch.rand(3, 8, 8), tmp_path / name / "a.png")
    folder = torchvision.datasets.ImageFolder(str(tmp_path))
    assert idx_to_class(folder) == {0: "cat", 1: "dog"}
    assert idx_to_class(Subset(folder, [1])) == {0: "cat", 1: "dog"}
    with pytest.raises(FinetuneError, match="class_to_idx"):
        idx_to_class([1, 2, 3])


def test_load_weights_reports_the_replaced_head(tmp_path):
    source = models.resnet18()
    torch.save(OrderedDict(source.state_dict()), tmp_path / "w.pth")
    target = models.resnet18()
    replace_head(target, 3)
    report = load_weights(target, tmp_path / "w.pth")
    assert report.mismatched == ["fc.weight (1000, 512)->(3, 512)", "fc.bias (1000,)->(3,)"]
    assert torch.equal(target.conv1.weight, source.conv1.weight)
