"""Fine-tuning helpers: head replacement for torchvision models and safe local weight loading."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torchvision
from torch import nn


class FinetuneError(ValueError):
    """A model, layer name or weights file that fine-tuning cannot use."""


# Where each torchvision family keeps its classification head, tried in order.
_HEAD_PATHS = ("fc", "heads.head", "head", "classifier")
SUPPORTED_FAMILIES = (
    "ResNet/ResNeXt/Wide-ResNet",
    "RegNet",
    "ShuffleNet",
    "GoogLeNet",
    "Inception3",
    "VGG",
    "AlexNet",
    "DenseNet",
    "MobileNetV2/V3",
    "MNASNet",
    "EfficientNet",
    "ConvNeXt",
    "MaxViT",
    "VisionTransformer",
    "SwinTransformer",
    "SqueezeNet",
)


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Replace the final classification layer of a torchvision classifier, in place.

    The new layer is freshly initialised; everything else is kept. Auxiliary heads of
    GoogLeNet and Inception v3 are replaced too.

    Returns:
        The new head module.
    """
    if not isinstance(num_classes, int) or num_classes < 1:
        raise FinetuneError(f"num_classes must be a positive int, got {num_classes!r}")
    if isinstance(model, torchvision.models.SqueezeNet):
        old = model.classifier[1]
        model.classifier[1] = nn.Conv2d(old.in_channels, num_classes, kernel_size=1)
        model.num_classes = num_classes
        return model.classifier[1]
    for path in _HEAD_PATHS:
        parent, name, module = _resolve(model, path)
        if module is None:
            continue
        if isinstance(module, nn.Linear):
            head = nn.Linear(module.in_features, num_classes, bias=module.bias is not None)
            setattr(parent, name, head)
            _replace_aux_heads(model, num_classes)
            return head
        if isinstance(module, nn.Sequential):
            index = _last_linear_index(module)
            if index is not None:
                old = module[index]
                module[index] = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
                return module[index]
    raise FinetuneError(
        f"replace_head does not know where the head of {type(model).__name__} is; it supports the torchvision "
        f"families {', '.join(SUPPORTED_FAMILIES)}. Replace the last layer yourself, e.g. "
        "`model.fc = nn.Linear(model.fc.in_features, num_classes)`."
    )


def _resolve(model: nn.Module, path: str) -> tuple[nn.Module, str, nn.Module | None]:
    parent: nn.Module = model
    *parents, name = path.split(".")
    for part in parents:
        child = getattr(parent, part, None)
        if not isinstance(child, nn.Module):
            return model, name, None
        parent = child
    module = getattr(parent, name, None)
    return parent, name, module if isinstance(module, nn.Module) else None


def _last_linear_index(seq: nn.Sequential) -> int | None:
    for index in range(len(seq) - 1, -1, -1):
        if isinstance(seq[index], nn.Linear):
            return index
    return None


def _replace_aux_heads(model: nn.Module, num_classes: int) -> None:
    for aux_path in ("AuxLogits.fc", "aux1.fc2", "aux2.fc2"):
        parent, name, module = _resolve(model, aux_path)
        if isinstance(module, nn.Linear):
            setattr(parent, name, nn.Linear(module.in_features, num_classes))


def build_classifier(name: str, num_classes: int, weights: str | os.PathLike[str] | None = None) -> nn.Module:
    """A torchvision classifier by name with its head replaced for `num_classes`.

    Args:
        name: Any name from `torchvision.models.list_models(module=torchvision.models)`.
        num_classes: Outputs of the new head.
        weights: A local state_dict file (ImageNet or your own) loaded before the head is
            replaced, so its backbone is kept whatever head it was saved with.
    """
    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        import difflib

        close = difflib.get_close_matches(name, available, n=5, cutoff=0.5)
        raise FinetuneError(
            f"unknown torchvision model {name!r}; closest: {', '.join(close) or 'none'} "
            f"(all: torchvision.models.list_models())"
        )
    kwargs = {"aux_logits": False, "init_weights": False} if name in ("googlenet", "inception_v3") else {}
    if name == "inception_v3":
        kwargs["aux_logits"] = True  # torchvision requires it; the aux head is only used in training
    model = torchvision.models.get_model(name, weights=None, **kwargs)
    if weights is not None:
        load_weights(model, weights)
    replace_head(model, num_classes)
    return model


@dataclass
class LoadReport:
    """What `load_weights` did: keys loaded, missing from the file, unexpected, or skipped."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        parts = [f"loaded {len(self.loaded)} tensors"]
        for label, keys in (
            ("missing", self.missing),
            ("unexpected", self.unexpected),
            ("shape-mismatched", self.mismatched),
        ):
            if keys:
                shown = ", ".join(keys[:6]) + (f", ... ({len(keys)} in all)" if len(keys) > 6 else "")
                parts.append(f"{label}: {shown}")
        return "; ".join(parts)


def load_weights(model: nn.Module, path: str | os.PathLike[str], strict: bool = False) -> LoadReport:
    """Load a local weights file into `model` safely and say what matched.

    Reads `.safetensors`, or a torch file with `weights_only=True` (no code runs). A dict
    holding `state_dict` or `model` is unwrapped, and a DDP `module.` prefix stripped.
    Tensors whose shape differs (such as an old head) are skipped and reported.

    Raises:
        FinetuneError: the file is missing or unreadable, nothing in it matches the model,
            or `strict` and some key is missing, unexpected or mismatched.
    """
    path = Path(path)
    if not path.is_file():
        raise FinetuneError(f"weights file {path} does not exist; give the path of a local .pth/.pt/.safetensors file")
    state = _read_state_dict(path)
    own = model.state_dict()
    report = LoadReport()
    usable = {}
    for key, value in state.items():
        if key not in own:
            report.unexpected.append(key)
        elif own[key].shape != value.shape:
            report.mismatched.append(f"{key} {tuple(value.shape)}->{tuple(own[key].shape)}")
        else:
            usable[key] = value
            report.loaded.append(key)
    report.missing = [
        key for key in own if key not in usable and not any(m.startswith(key + " ") for m in report.mismatched)
    ]
    if not usable:
        raise FinetuneError(
            f"no tensor in {path} matches {type(model).__name__} ({len(state)} keys in the file, e.g. "
            f"{', '.join(list(state)[:3])}); is it the weights of another architecture?"
        )
    if strict and (report.missing or report.unexpected or report.mismatched):
        raise FinetuneError(f"{path} does not fit {type(model).__name__} exactly: {report}")
    model.load_state_dict(usable, strict=False)
    return report


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise FinetuneError(
            f"cannot read weights from {path}: {type(exc).__name__}: {exc}. Expected a state_dict saved with "
            "torch.save(model.state_dict(), path) or a .safetensors file"
        ) from exc
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FinetuneError(f"{path} does not hold a state_dict (a dict of tensors)")
    return {key.removeprefix("module.").removeprefix("_orig_mod."): value for key, value in state.items()}
