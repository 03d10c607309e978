"""Fine-tuning helpers: freezing, param groups by module name, head replacement, local weights."""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase

from callbacks_kit.layers import closest_names


class FinetuneError(ValueError):
    """A model, layer name or weights file that fine-tuning cannot use."""


# Where each torchvision family keeps its classification head, tried in order.
_HEAD_PATHS = ("fc", "heads.head", "head", "classifier")
_AUX_HEADS = ("AuxLogits.fc", "aux1.fc2", "aux2.fc2")  # Inception v3, GoogLeNet
_NORMS = tuple(n for n in (_NormBase, nn.GroupNorm, nn.LayerNorm, getattr(nn, "RMSNorm", None)) if n is not None)
SUPPORTED_FAMILIES = (
    "ResNet/ResNeXt/Wide-ResNet, RegNet, ShuffleNet, GoogLeNet, Inception3, VGG, AlexNet, DenseNet, "
    "MobileNetV2/V3, MNASNet, EfficientNet, ConvNeXt, MaxViT, VisionTransformer, SwinTransformer, SqueezeNet"
)


# ------------------------------------------------------------------------------- freezing
def freeze(modules: nn.Module | Iterable[nn.Module], train_bn: bool = False) -> None:
    """Stop training `modules`: `requires_grad=False` and gradients dropped.

    The optimizer skips parameters whose grad is None, so frozen weights get no update,
    no weight decay and no momentum. BatchNorm layers go to eval mode so their running
    statistics stay fixed; `model.train()` undoes that, which is why the `FreezeUnfreeze`
    callback re-applies it every batch. Under DDP call `trainer.refresh_trainable()` after.

    Args:
        modules: A module or modules; all their submodules are frozen.
        train_bn: Keep BatchNorm layers trainable and in training mode (as fastai and
            Lightning do when asked), for domains far from the pretraining data.
    """
    for module in _modules(modules):
        if isinstance(module, _BatchNorm) and train_bn:
            _set_trainable(module, True)
            module.train()
            continue
        _set_trainable(module, False)
        if isinstance(module, _BatchNorm):
            module.eval()


def unfreeze(modules: nn.Module | Iterable[nn.Module]) -> None:
    """Train `modules` again: `requires_grad=True` and BatchNorm back in training mode.

    Under DDP call `trainer.refresh_trainable()` after, or the replicas drift apart.
    """
    for module in _modules(modules):
        _set_trainable(module, True)
        if isinstance(module, _BatchNorm):
            module.train()


def _modules(modules: nn.Module | Iterable[nn.Module]) -> list[nn.Module]:
    roots = [modules] if isinstance(modules, nn.Module) else list(modules)
    for root in roots:
        if not isinstance(root, nn.Module):
            raise FinetuneError(f"expected nn.Module objects, got {type(root).__name__}; pass model.layer4, not a name")
    return [module for root in roots for module in root.modules()]


def _set_trainable(module: nn.Module, trainable: bool) -> None:
    for param in module.parameters(recurse=False):
        param.requires_grad_(trainable)
        if not trainable:
            param.grad = None


# ------------------------------------------------------------------------------- selection
def select_parameters(model: nn.Module, name: str) -> dict[str, nn.Parameter]:
    """Parameters under a module or parameter name ("layer4", "features.3", "class_token").

    Raises:
        FinetuneError: no module or parameter has that name; lists the closest real names.
    """
    params = dict(model.named_parameters())
    if not name or (name not in params and name not in dict(model.named_modules())):
        close = closest_names(model, name, n=3) + difflib.get_close_matches(name, list(params), n=2, cutoff=0.5)
        raise FinetuneError(
            f"{type(model).__name__} has no layer or parameter named {name!r}; closest: "
            f"{', '.join(dict.fromkeys(close)) or 'none'}. Names are those of model.named_modules() "
            "(e.g. 'layer4', 'features.3'); print(model) shows them."
        )
    return {key: p for key, p in params.items() if key == name or key.startswith(name + ".")}


def param_groups(
    model: nn.Module,
    lrs: Mapping[str | tuple[str, ...], float],
    rest: float | None = None,
    *,
    rest_name: str = "rest",
    weight_decay: float | None = None,
    no_decay_bias_and_norm: bool = False,
) -> list[dict[str, Any]]:
    """Optimizer param groups by module name, each with its own LR and a "name" key.

    Build the optimizer over all parameters up front, frozen ones included: freezing then
    never needs param-group surgery, and a resumed optimizer has the same groups.

    Args:
        model: The model (not a DDP wrapper).
        lrs: Module or parameter name (or a tuple of names sharing a group) to its LR,
            e.g. `{"fc": 1e-3, "layer4": 1e-4, ("conv1", "bn1", "layer1"): 1e-5}`.
        rest: LR of one more group holding every parameter not named; None makes a
            parameter left out an error.
        rest_name: Name of that group.
        weight_decay: Set on every group (else the optimizer's default applies).
        no_decay_bias_and_norm: Split each group in two: biases and normalisation-layer
            parameters go to `<name>/no_decay` with weight_decay 0.

    Returns:
        Dicts for `torch.optim.AdamW(groups, ...)`; the "name" keys are the TensorBoard
        tags `lr/<name>`.

    Raises:
        FinetuneError: an unknown name, two groups sharing a parameter, a name without
            parameters, or (with `rest=None`) parameters in no group.
    """
    owner: dict[str, str] = {}
    chosen: list[tuple[str, float, list[str]]] = []
    for key, lr in lrs.items():
        names = (key,) if isinstance(key, str) else tuple(key)
        label = "+".join(names)
        members: list[str] = []
        for name in names:
            selected = select_parameters(model, name)
            if not selected:
                raise FinetuneError(f"{name!r} has no parameters; drop it from the param groups")
            for param_name in selected:
                if param_name in owner:
                    raise FinetuneError(
                        f"param groups overlap: {param_name} is in both {owner[param_name]!r} and {label!r}; "
                        "name disjoint modules (e.g. 'layer4' or 'layer4.1', not both)"
                    )
                owner[param_name] = label
                members.append(param_name)
        chosen.append((label, _check_lr(lr, label), members))
    left = [name for name, _ in model.named_parameters() if name not in owner]
    if left and rest is None:
        shown = ", ".join(left[:5]) + (f", ... ({len(left)} in all)" if len(left) > 5 else "")
        raise FinetuneError(
            f"param groups leave parameters out: {shown}; name their modules too, or pass rest=<lr> "
            "to put them in one more group"
        )
    if left and rest is not None:
        chosen.append((rest_name, _check_lr(rest, rest_name), left))
    by_name = dict(model.named_parameters())
    no_decay = _no_decay_names(model) if no_decay_bias_and_norm else set()
    groups: list[dict[str, Any]] = []
    for label, lr, members in chosen:
        extra = {} if weight_decay is None else {"weight_decay": weight_decay}
        decay = [by_name[n] for n in members if n not in no_decay]
        plain = [by_name[n] for n in members if n in no_decay]
        if decay:
            groups.append({"params": decay, "lr": lr, "name": label, **extra})
        if plain:
            groups.append({"params": plain, "lr": lr, "name": f"{label}/no_decay", "weight_decay": 0.0})
    return groups


def _check_lr(lr: Any, label: str) -> float:
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr < 0:
        raise FinetuneError(f"the LR of param group {label!r} must be a number >= 0, got {lr!r}")
    return float(lr)


def _no_decay_names(model: nn.Module) -> set[str]:
    """Biases, and every parameter of a normalisation layer."""
    names = {name for name, _ in model.named_parameters() if name.rsplit(".", 1)[-1] == "bias"}
    for module_name, module in model.named_modules():
        if isinstance(module, _NORMS):
            prefix = f"{module_name}." if module_name else ""
            names.update(prefix + name for name, _ in module.named_parameters(recurse=False))
    return names


# ------------------------------------------------------------------------------- heads
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


def idx_to_class(dataset: Any) -> dict[int, str]:
    """`{index: class name}` of an ImageFolder (or a Subset of one), to print predictions by name."""
    while not hasattr(dataset, "class_to_idx") and hasattr(dataset, "dataset"):
        dataset = dataset.dataset  # Subset and similar wrappers
    mapping = getattr(dataset, "class_to_idx", None)
    if not isinstance(mapping, Mapping):
        raise FinetuneError(
            f"{type(dataset).__name__} has no class_to_idx; pass a torchvision ImageFolder (or a Subset of one)"
        )
    return {int(index): str(name) for name, index in mapping.items()}


# ------------------------------------------------------------------------------- weights
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
