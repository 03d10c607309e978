"""Named torchvision weights (`DEFAULT`, `IMAGENET1K_V1`...) read from the local torch hub cache, never downloaded."""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision

from callbacks_kit.errors import FinetuneError

_WEIGHT_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")


def is_weight_name(weights: str | os.PathLike[str]) -> bool:
    """Whether `weights` names a torchvision weight enum member (`DEFAULT`, `IMAGENET1K_V2`) rather than a file."""
    return isinstance(weights, str) and bool(_WEIGHT_NAME.match(weights)) and not Path(weights).exists()


def cached_weights(model_name: str, weight_name: str) -> Path:
    """The torch hub cache file of torchvision's `weight_name` weights of `model_name`.

    Offline: the file must already be in `torch.hub.get_dir()/checkpoints` (what
    `torchvision.models.get_model(name, weights=...)` downloads there); nothing is fetched.

    Raises:
        FinetuneError: the model has no weight enum or no such member, or the file is not
            in the cache (the message names the expected path and a command that downloads it).
    """
    try:
        enum = torchvision.models.get_model_weights(model_name)
    except (ValueError, KeyError) as exc:
        raise FinetuneError(
            f"--weights {weight_name}: {model_name} has no torchvision weight enum, so named weights do not apply; "
            "pass a local weights file (--weights PATH) instead"
        ) from exc
    members = list(enum.__members__)
    if weight_name not in members:
        raise FinetuneError(
            f"--weights {weight_name}: {enum.__name__} has no such weights; choose one of {', '.join(members)}, "
            "or pass a local weights file"
        )
    weights = enum[weight_name]
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)
    if not path.is_file():
        raise FinetuneError(
            f"--weights {weight_name}: {enum.__name__}.{weights.name} is not in the torch hub cache (expected "
            f'{path}) and nothing is downloaded. On a machine with network run: python -c "import torchvision; '
            f"torchvision.models.get_model('{model_name}', weights='{weights.name}')\" (or: curl -L {weights.url} "
            f"-o {path}); set TORCH_HOME to use another cache"
        )
    return path


def weights_input_size(model_name: str, weight_name: str) -> tuple[int, int] | None:
    """`(crop, resize)` of torchvision's named weights: the input side they were trained and evaluated at.

    `resize` is the shorter side images are resized to before the centre crop of `crop`
    (`weights.transforms()`, read from the enum alone: nothing is loaded). None when the
    model has no such weights or they state no sizes; `cached_weights` explains the first.
    """
    try:
        preset = torchvision.models.get_model_weights(model_name)[weight_name].transforms()
    except (ValueError, KeyError):
        return None
    crop, resize = getattr(preset, "crop_size", None), getattr(preset, "resize_size", None)
    if not crop or not resize:
        return None
    return int(crop[0]), int(resize[0])
