"""timm models by name (`timm/<name>`), offline: random init or a local weights file, classifier reset."""

from __future__ import annotations

import difflib
from typing import Any

from torch import nn

from callbacks_kit.errors import FinetuneError

PREFIX = "timm/"


def is_timm_name(name: str) -> bool:
    """Whether `name` asks for a timm model (`timm/resnet18`)."""
    return name.startswith(PREFIX)


def import_timm() -> Any:
    """The timm module, or an error naming the extra that installs it."""
    try:
        import timm
    except ImportError as exc:
        raise FinetuneError('timm models need the timm package: pip install "callbacks-kit[timm]"') from exc
    return timm


def create_timm_model(name: str, num_classes: int | None = None, **kwargs: Any) -> nn.Module:
    """A timm model by name (with or without the `timm/` prefix), randomly initialised.

    Args:
        name: A name from `timm.list_models()`.
        num_classes: Outputs of the classifier; None keeps the model's default.
        kwargs: Passed to `timm.create_model` (e.g. `img_size` for ViTs).

    Raises:
        FinetuneError: timm is not installed, or the name does not exist (closest names listed).
    """
    timm = import_timm()
    bare = name.removeprefix(PREFIX)
    available = timm.list_models()
    if bare not in available:
        close = difflib.get_close_matches(bare, available, n=5, cutoff=0.5)
        raise FinetuneError(
            f"unknown timm model {bare!r}; closest: {', '.join(PREFIX + c for c in close) or 'none'} "
            "(all: timm.list_models())"
        )
    extra = {} if num_classes is None else {"num_classes": num_classes}
    return timm.create_model(bare, pretrained=False, **extra, **kwargs)
