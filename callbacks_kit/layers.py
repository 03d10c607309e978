"""Choosing layers by their names in `model.named_modules()`, with helpful errors and defaults."""

from __future__ import annotations

import difflib

from torch import nn

from callbacks_kit.errors import LayerNotFoundError


def resolve_module(model: nn.Module, name: str) -> nn.Module:
    """The submodule called `name` in `model.named_modules()` ("" is the model itself).

    Raises:
        LayerNotFoundError: no such name; the message lists the closest real names.
    """
    modules = dict(model.named_modules())
    if name in modules:
        return modules[name]
    close = closest_names(model, name)
    raise LayerNotFoundError(
        f"{type(model).__name__} has no layer named {name!r}; closest: {', '.join(close) or 'none'}. "
        "Layer names are those of model.named_modules(), e.g. 'layer4' or 'features.3'; print(model) shows them."
    )


def closest_names(model: nn.Module, name: str, n: int = 5) -> list[str]:
    """Up to `n` real module names that look like `name`: same prefix or suffix first, then similar."""
    names = [key for key, _ in model.named_modules() if key]
    stem = name.strip(".")
    related = [key for key in names if stem and (key.startswith(stem) or key.endswith(stem) or stem.startswith(key))]
    similar = difflib.get_close_matches(name, names, n=n, cutoff=0.4)
    ordered = list(dict.fromkeys(similar[:2] + related + similar))
    return ordered[:n]


def find_modules(model: nn.Module, kind: type[nn.Module] | tuple[type[nn.Module], ...]) -> list[tuple[str, nn.Module]]:
    """`(name, module)` of every submodule that is an instance of `kind`, in definition order."""
    return [(name, module) for name, module in model.named_modules() if name and isinstance(module, kind)]


def first_conv(model: nn.Module) -> str:
    """Name of the first `nn.Conv2d` (the layer whose kernels look at pixels)."""
    convs = find_modules(model, nn.Conv2d)
    if not convs:
        raise LayerNotFoundError(f"{type(model).__name__} has no nn.Conv2d layer; name the layers to use explicitly")
    return convs[0][0]


def conv_blocks(model: nn.Module) -> list[str]:
    """The main convolutional stages of `model`, in order.

    Starting from the model, keeps descending while a single child holds all the
    convolutions (a `features` wrapper, a backbone); then returns the children that
    contain a `nn.Conv2d`, each item of an `nn.ModuleList` counted on its own (a list never
    runs, its items do). ResNet: `conv1, layer1, ..., layer4`; VGG: `features.0, ...`.
    """
    parent, prefix = model, ""
    while True:
        children = [(name, child) for name, child in parent.named_children() if _has_conv(child)]
        if not children:
            raise LayerNotFoundError(
                f"{type(model).__name__} has no nn.Conv2d layer; name the layers to use explicitly"
            )
        if len(children) == 1 and not isinstance(children[0][1], nn.Conv2d):
            parent, prefix = children[0][1], f"{prefix}{children[0][0]}."
            continue
        blocks: list[str] = []
        for name, child in children:
            if isinstance(child, nn.ModuleList):
                blocks += [f"{prefix}{name}.{item}" for item, grand in child.named_children() if _has_conv(grand)]
            else:
                blocks.append(prefix + name)
        return blocks


def last_conv_block(model: nn.Module) -> str:
    """The last convolutional stage (`layer4` in a ResNet): Grad-CAM's usual target."""
    return conv_blocks(model)[-1]


def spread_conv_blocks(model: nn.Module, count: int = 4) -> list[str]:
    """`count` convolutional stages spread evenly from the input to the output."""
    return spread(conv_blocks(model), count)


def spread(names: list[str], count: int) -> list[str]:
    """`count` of `names` spread evenly from the first to the last (all of them when there are fewer)."""
    if count >= len(names):
        return list(names)
    if count == 1:
        return [names[-1]]
    picks = [round(i * (len(names) - 1) / (count - 1)) for i in range(count)]
    return [names[i] for i in dict.fromkeys(picks)]


def _has_conv(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in module.modules())
