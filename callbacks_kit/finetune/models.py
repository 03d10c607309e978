"""Building a torchvision classifier for a number of classes, and naming its classes."""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping
from typing import Any

import torchvision
from torch import nn

from callbacks_kit.data.wrappers import base_dataset
from callbacks_kit.errors import FinetuneError
from callbacks_kit.finetune.heads import replace_head
from callbacks_kit.finetune.hub import cached_weights, is_weight_name
from callbacks_kit.finetune.timm_models import create_timm_model, is_timm_name
from callbacks_kit.finetune.weights import load_weights


def build_classifier(
    name: str,
    num_classes: int,
    weights: str | os.PathLike[str] | None = None,
    allow_partial: bool = False,
    report: Callable[[str], None] | None = None,
    head: str = "linear",
    hidden: int = 512,
    dropout: float = 0.2,
) -> nn.Module:
    """A torchvision (or timm) classifier by name with its head replaced for `num_classes`.

    Args:
        name: Any name from `torchvision.models.list_models(module=torchvision.models)`, or
            `timm/<name>` for a timm model (the `[timm]` extra).
        num_classes: Outputs of the new head.
        weights: A local state_dict file (ImageNet or your own) loaded before the head is
            replaced, so its backbone is kept whatever head it was saved with; or the name of
            torchvision weights (`DEFAULT`, `IMAGENET1K_V1`), read from the torch hub cache
            (offline, see `finetune.hub`).
        allow_partial: Load the matching part of weights that only partly fit the model
            (see `load_weights`); by default such a file is refused.
        report: Called with one line saying what the weights load matched (e.g. `print`).
        head: "linear" or "mlp" (see `replace_head`).
        hidden: Hidden units of the MLP head.
        dropout: Dropout of the MLP head.
    """
    if is_timm_name(name):
        if weights is not None and is_weight_name(str(weights)):
            raise FinetuneError(
                f"--weights {weights}: named weights are torchvision's; for {name} pass a local weights file"
            )
        model = create_timm_model(name)
        _load(model, weights, allow_partial, report)
        replace_head(model, num_classes, head, hidden, dropout)
        return model
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
    if weights is not None and is_weight_name(str(weights)):
        path = cached_weights(name, str(weights))
        _load(model, path, allow_partial, report, f"{weights} ({path})")
    else:
        _load(model, weights, allow_partial, report)
    replace_head(model, num_classes, head, hidden, dropout)
    return model


def _load(
    model: nn.Module,
    weights: str | os.PathLike[str] | None,
    allow_partial: bool,
    report: Callable[[str], None] | None,
    label: str | None = None,
) -> None:
    if weights is None:
        return
    loaded = load_weights(model, weights, allow_partial=allow_partial)
    if report is not None:
        report(f"weights {label or weights}: {loaded}")


def idx_to_class(dataset: Any) -> dict[int, str]:
    """`{index: class name}` of an ImageFolder (or a Subset of one), to print predictions by name."""
    dataset = base_dataset(dataset)
    mapping = getattr(dataset, "class_to_idx", None)
    if not isinstance(mapping, Mapping):
        raise FinetuneError(
            f"{type(dataset).__name__} has no class_to_idx; pass a torchvision ImageFolder (or a Subset of one)"
        )
    return {int(index): str(name) for name, index in mapping.items()}
