"""Removable forward-hook capture and layer lookup by name."""

import pytest
import torch
import torchvision
from torch import nn

from callbacks_kit.hooks import ActivationCapture, hooked_modules
from callbacks_kit.layers import (
    LayerNotFoundError,
    closest_names,
    conv_blocks,
    find_modules,
    first_conv,
    last_conv_block,
    resolve_module,
    spread_conv_blocks,
)


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(4, 8, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    )


def test_capture_keeps_outputs_and_removes_its_hooks():
    model = small_cnn()
    x = torch.randn(2, 3, 8, 8)
    with ActivationCapture(model, ["0", "2"]) as capture:
        assert capture.attached and hooked_modules(model) == ["0", "2"]
        model(x)
    assert hooked_modules(model) == [] and not capture.attached
    assert capture.outputs["0"].shape == (2, 4, 8, 8) and capture.outputs["2"].shape == (2, 8, 8, 8)
    assert not capture.outputs["0"].requires_grad
    model(x)  # later forwards are not recorded
    assert len(capture.outputs) == 2


def test_hooks_are_removed_when_the_forward_fails():
    model = small_cnn()
    with pytest.raises(RuntimeError), ActivationCapture(model, ["0"]):
        model(torch.randn(2, 5, 8, 8))  # wrong channel count
    assert hooked_modules(model) == []


def test_clone_protects_outputs_from_inplace_ops_downstream():
    model = small_cnn()
    x = torch.randn(2, 3, 8, 8)
    with ActivationCapture(model, ["0"]) as capture:
        model(x)
    assert (capture.outputs["0"] < 0).any()  # pre-ReLU values survive the in-place ReLU
    with ActivationCapture(model, ["0"], clone=False) as shared:
        model(x)
    assert not (shared.outputs["0"] < 0).any()


def test_attached_outputs_give_gradients_without_touching_param_grads():
    model = small_cnn()
    x = torch.randn(2, 3, 8, 8)
    with ActivationCapture(model, ["2"], detach=False) as capture:
        out = model(x)
    (grad,) = torch.autograd.grad(out.sum(), capture.outputs["2"])
    assert grad.shape == (2, 8, 8, 8) and grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_output_replaced_by_clone_keeps_results_identical():
    model = small_cnn()
    x = torch.randn(2, 3, 8, 8)
    expected = model(x)
    with ActivationCapture(model, ["0", "2"], detach=False):
        got = model(x)
    torch.testing.assert_close(got, expected)


def test_unknown_layer_lists_closest_names():
    model = torchvision.models.resnet18()
    with pytest.raises(LayerNotFoundError, match="layer5.*closest: .*layer4") as info:
        resolve_module(model, "layer5")
    assert "named_modules" in str(info.value)
    with pytest.raises(LayerNotFoundError):
        ActivationCapture(model, ["layer4.2"])
    assert "layer4.0.conv1" in closest_names(model, "layer4.0.conv")


def test_resnet_defaults():
    model = torchvision.models.resnet18()
    assert resolve_module(model, "layer4.1.conv2") is model.layer4[1].conv2
    assert resolve_module(model, "") is model
    assert first_conv(model) == "conv1"
    assert conv_blocks(model) == ["conv1", "layer1", "layer2", "layer3", "layer4"]
    assert last_conv_block(model) == "layer4"
    assert spread_conv_blocks(model, 4) == ["conv1", "layer1", "layer3", "layer4"]
    assert spread_conv_blocks(model, 1) == ["layer4"]
    assert len(find_modules(model, nn.Conv2d)) == 20


def test_defaults_descend_into_a_single_wrapper():
    vgg = torchvision.models.vgg11()
    blocks = conv_blocks(vgg)
    assert blocks[0] == "features.0" and blocks[-1] == "features.18"
    assert last_conv_block(vgg) == "features.18"

    class Wrapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = torchvision.models.resnet18()
            self.head = nn.Linear(1000, 2)

    assert last_conv_block(Wrapped()) == "backbone.layer4"


def test_no_conv_is_an_error():
    with pytest.raises(LayerNotFoundError, match="no nn.Conv2d"):
        last_conv_block(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(LayerNotFoundError, match="no nn.Conv2d"):
        first_conv(nn.Linear(2, 2))
