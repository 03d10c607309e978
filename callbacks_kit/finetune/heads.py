"""Where torchvision classifiers keep their head, replacing it, and the backbone's blocks."""

from __future__ import annotations

from typing import Any

import torchvision
from torch import nn

from callbacks_kit.errors import FinetuneError

# Where each torchvision family keeps its classification head, tried in order.
_HEAD_PATHS = ("fc", "heads.head", "head", "classifier")
_AUX_HEADS = ("AuxLogits.fc", "aux1.fc2", "aux2.fc2")  # Inception v3, GoogLeNet
SUPPORTED_FAMILIES = (
    "ResNet/ResNeXt/Wide-ResNet, RegNet, ShuffleNet, GoogLeNet, Inception3, VGG, AlexNet, DenseNet, "
    "MobileNetV2/V3, MNASNet, EfficientNet, ConvNeXt, MaxViT, VisionTransformer, SwinTransformer, SqueezeNet"
)


def head_name(model: nn.Module) -> str:
    """Name of the final classification layer of a torchvision classifier ("fc", "classifier.6"...).

    Raises:
        FinetuneError: an architecture whose head is not where torchvision families keep it.
    """
    if isinstance(model, torchvision.models.SqueezeNet):
        return "classifier.1"  # a 1x1 convolution, not a Linear
    for path in _HEAD_PATHS:
        module = _get(model, path)
        if isinstance(module, nn.Linear):
            return path
        if isinstance(module, nn.Sequential):
            linear = [i for i, layer in enumerate(module) if isinstance(layer, nn.Linear)]
            if linear:
                return f"{path}.{linear[-1]}"
    raise FinetuneError(
        f"cannot find the head of {type(model).__name__}: it is not one of the torchvision families "
        f"{SUPPORTED_FAMILIES}. Replace the last layer yourself, e.g. "
        "`model.fc = nn.Linear(model.fc.in_features, num_classes)`, and name the modules to freeze."
    )


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Replace the final classification layer of a torchvision classifier, in place.

    The new layer is freshly initialised, on the old one's device and dtype; everything
    else is kept. Auxiliary heads of GoogLeNet and Inception v3 are replaced too.

    Returns:
        The new head module.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise FinetuneError(f"num_classes must be a positive int, got {num_classes!r}")
    path = head_name(model)
    old = _get(model, path)
    assert old is not None
    if isinstance(old, nn.Conv2d):
        new: nn.Module = nn.Conv2d(old.in_channels, num_classes, kernel_size=old.kernel_size)
    else:
        new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    new.to(device=old.weight.device, dtype=old.weight.dtype)
    _set(model, path, new)
    if hasattr(model, "num_classes"):
        model.num_classes = num_classes
    for aux_path in _AUX_HEADS:
        aux = _get(model, aux_path)
        if isinstance(aux, nn.Linear):
            _set(model, aux_path, nn.Linear(aux.in_features, num_classes).to(aux.weight.device, aux.weight.dtype))
    return new


def backbone_blocks(model: nn.Module, head: str | None = None) -> list[str]:
    """Names covering every parameter outside the head, in coarse blocks from input to output.

    ResNet: `conv1, bn1, layer1, ..., layer4`; MobileNet/EfficientNet: `features.0, ...`.
    Parameters held directly by a module (a ViT's `class_token`) are named on their own.

    Args:
        model: The model.
        head: The head's name; default `head_name(model)`.
    """
    head = head_name(model) if head is None else head
    blocks = _blocks(model, "", head)
    while len(blocks) == 1 and isinstance(_get(model, blocks[0]), nn.Module):
        inner = _blocks(_get(model, blocks[0]), blocks[0] + ".", head)
        if len(inner) < 2:
            break
        blocks = inner
    return blocks


def _blocks(module: nn.Module, prefix: str, head: str) -> list[str]:
    names = [prefix + name for name, _ in module.named_parameters(recurse=False)]
    for child_name, child in module.named_children():
        full = prefix + child_name
        if full == head or next(child.parameters(), None) is None:
            continue
        names += _blocks(child, full + ".", head) if head.startswith(full + ".") else [full]
    return names


def _get(model: nn.Module, path: str) -> Any:
    module: Any = model
    for part in path.split("."):
        module = getattr(module, part, None)
        if not isinstance(module, nn.Module):
            return None
    return module


def _set(model: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(_get(model, parent) if parent else model, name, new)
