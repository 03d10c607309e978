"""Choosing parameters by module name, and optimizer param groups with an LR each."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from torch import nn

from callbacks_kit.compat import RUNNING_STAT_NORMS
from callbacks_kit.errors import FinetuneError
from callbacks_kit.layers import closest_names

_NORMS = (*RUNNING_STAT_NORMS, nn.GroupNorm, nn.LayerNorm, *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()))


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
