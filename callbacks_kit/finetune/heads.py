"""Where torchvision classifiers keep their head, replacing it, and the backbone's blocks."""

from __future__ import annotations

from typing import Any

import torchvision
from torch import nn

from callbacks_kit.choices import HEADS as HEADS
from callbacks_kit.errors import FinetuneError
from callbacks_kit.finetune.segmentation_models import SEGMENTATION_HEAD, is_segmentation_model

# Where each torchvision family keeps its classification head, tried in order.
_HEAD_PATHS = ("fc", "heads.head", "head", "classifier")
_AUX_HEADS = ("AuxLogits.fc", "aux1.fc2", "aux2.fc2")  # Inception v3, GoogLeNet
SUPPORTED_FAMILIES = (
    "ResNet/ResNeXt/Wide-ResNet, RegNet, ShuffleNet, GoogLeNet, Inception3, VGG, AlexNet, DenseNet, "
    "MobileNetV2/V3, MNASNet, EfficientNet, ConvNeXt, MaxViT, VisionTransformer, SwinTransformer, SqueezeNet"
)


class MLPHead(nn.Sequential):
    """A classification head with a hidden layer: dropout, Linear, BatchNorm, ReLU, dropout, Linear.

    The head of the fine-tuning tutorials, in place of a single Linear layer. It counts as
    one head: `head_name` names it whole, so freezing and per-group LRs treat it as the head.

    Args:
        in_features: Features the backbone gives.
        num_classes: Outputs.
        hidden: Units of the hidden layer.
        dropout: Dropout probability before each Linear layer.
    """

    def __init__(self, in_features: int, num_classes: int, hidden: int = 512, dropout: float = 0.2) -> None:
        if hidden < 1 or not 0 <= dropout < 1:
            raise FinetuneError(f"an MLP head needs hidden >= 1 and 0 <= dropout < 1, got {hidden} and {dropout}")
        super().__init__(
            nn.Dropout(dropout),
            nn.Linear(in_features, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        self.in_features, self.out_features, self.hidden, self.dropout = in_features, num_classes, hidden, dropout


def head_name(model: nn.Module) -> str:
    """Name of the final classification layer of a torchvision or timm classifier ("fc", "classifier.6"...).

    An `MLPHead` is named whole, and so is a torchvision segmentation model's head ("classifier").
    A timm model's head is the one its `pretrained_cfg` names.

    Raises:
        FinetuneError: an architecture whose head is not where torchvision families keep it.
    """
    if isinstance(model, torchvision.models.SqueezeNet):
        return "classifier.1"  # a 1x1 convolution, not a Linear
    if is_segmentation_model(model):
        return SEGMENTATION_HEAD  # the whole segmentation head: freezing and param groups treat it as the head
    timm_head = getattr(model, "pretrained_cfg", {}).get("classifier") if _is_timm(model) else None
    paths = (timm_head, *_HEAD_PATHS) if isinstance(timm_head, str) else _HEAD_PATHS
    for path in paths:
        module = _get(model, path)
        if isinstance(module, (nn.Linear, MLPHead)):
            return path
        if isinstance(module, nn.Sequential):
            linear = [i for i, layer in enumerate(module) if isinstance(layer, (nn.Linear, MLPHead))]
            if linear:
                return f"{path}.{linear[-1]}"
    raise FinetuneError(
        f"cannot find the head of {type(model).__name__}: it is not one of the torchvision families "
        f"{SUPPORTED_FAMILIES}. Replace the last layer yourself, e.g. "
        "`model.fc = nn.Linear(model.fc.in_features, num_classes)`, and name the modules to freeze."
    )


def replace_head(
    model: nn.Module, num_classes: int, head: str = "linear", hidden: int = 512, dropout: float = 0.2
) -> nn.Module:
    """Replace the final classification layer of a torchvision classifier, in place.

    The new layer is freshly initialised, on the old one's device and dtype; everything
    else is kept. Auxiliary heads of GoogLeNet and Inception v3 are replaced too.

    Args:
        model: The classifier.
        num_classes: Outputs of the new head.
        head: "linear" (one Linear layer, as torchvision builds it) or "mlp" (an `MLPHead`).
        hidden: Hidden units of the MLP head.
        dropout: Dropout of the MLP head.

    Returns:
        The new head module.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise FinetuneError(f"num_classes must be a positive int, got {num_classes!r}")
    if head not in HEADS:
        raise FinetuneError(f"head={head!r}; use one of {', '.join(HEADS)}")
    path = head_name(model)
    old = _get(model, path)
    assert old is not None
    weight = next(old.parameters())
    if isinstance(old, nn.Conv2d):
        if head == "mlp":
            raise FinetuneError(
                f"{type(model).__name__} classifies with a 1x1 convolution over a feature map, where an MLP head "
                "does not fit; use head='linear' (--head linear) for it"
            )
        height, width = old.kernel_size  # torch types it tuple[int, ...]; a Conv2d's is a pair
        new: nn.Module = nn.Conv2d(old.in_channels, num_classes, kernel_size=(height, width))
    elif head == "mlp":
        new = MLPHead(old.in_features, num_classes, hidden, dropout)
    else:
        bias = old.bias is not None if isinstance(old, nn.Linear) else True
        new = nn.Linear(old.in_features, num_classes, bias=bias)
    new.to(device=weight.device, dtype=weight.dtype)
    _set(model, path, new)
    if hasattr(model, "num_classes"):
        # nn.Module.__setattr__ is annotated for tensors and modules only; any value is stored.
        model.num_classes = num_classes  # type: ignore[assignment]
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


def _is_timm(model: nn.Module) -> bool:
    return type(model).__module__.startswith("timm.")


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
