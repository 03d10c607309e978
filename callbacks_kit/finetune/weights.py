"""Loading a local weights file safely (safetensors or `weights_only` torch files) and reporting what matched."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from callbacks_kit.errors import FinetuneError


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


PARTIAL_LIMIT = 0.25  # a larger share of unused file tensors or missing model tensors is another architecture


def load_weights(
    model: nn.Module, path: str | os.PathLike[str], strict: bool = False, allow_partial: bool = True
) -> LoadReport:
    """Load a local weights file into `model` safely and say what matched.

    Reads safetensors, or a torch file with `weights_only=True` (no code runs), told apart
    by their first bytes (`read_state_dict`). A dict holding `state_dict` or `model` is
    unwrapped, and a DDP `module.` prefix stripped. Tensors whose shape differs (such as an
    old head) are skipped and reported.

    Args:
        model: The model to load into.
        path: The weights file.
        strict: Refuse any missing, unexpected or mismatched key.
        allow_partial: When False, refuse a file of which more than a quarter of the tensors
            is unused, or that misses more than a quarter of the model's (the weights of
            another architecture, such as ResNet-34 weights for a ResNet-18).

    Raises:
        FinetuneError: the file is missing, not weights, damaged or truncated, nothing in it matches the model,
            `strict` and some key is missing, unexpected or mismatched, or the load is
            partial and `allow_partial` is False.
    """
    path = Path(path)
    return load_state(model, read_state_dict(path), path, strict=strict, allow_partial=allow_partial)


def load_state(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    source: str | os.PathLike[str],
    strict: bool = False,
    allow_partial: bool = True,
) -> LoadReport:
    """Load a state dict already read (`read_state_dict`) into `model`, as `load_weights` does; `source` names it."""
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
            f"no tensor in {source} matches {type(model).__name__} ({len(state)} keys in the file, e.g. "
            f"{', '.join(list(state)[:3])}); is it the weights of another architecture?"
        )
    if strict and (report.missing or report.unexpected or report.mismatched):
        raise FinetuneError(f"{source} does not fit {type(model).__name__} exactly: {report}")
    unused = len(report.unexpected) + len(report.mismatched)
    if not allow_partial and (unused > PARTIAL_LIMIT * len(state) or len(report.missing) > PARTIAL_LIMIT * len(own)):
        raise FinetuneError(
            f"{source} only partly fits {type(model).__name__}: {unused} of its {len(state)} tensors are unused and "
            f"{len(report.missing)} of the model's {len(own)} are missing ({report}); are these the weights of "
            "another architecture? To load the matching part anyway, pass --allow-partial-weights "
            "(allow_partial=True)"
        )
    model.load_state_dict(usable, strict=False)
    return report


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, read safely: safetensors, or a torch file with `weights_only=True`.

    The format is told by the file's first bytes, not its name. A dict holding `state_dict`,
    `model` or `model_state_dict` is unwrapped; DDP's `module.` and compile's `_orig_mod.`
    prefixes are stripped.

    Raises:
        FinetuneError: a folder, a missing file, a file that is not weights (which kind it
            is, as far as the first bytes tell), or one damaged or truncated.
    """
    path = Path(path)
    if path.is_dir():
        raise FinetuneError(
            f"weights path {path} is a folder, not a file; give a .pth/.pt/.safetensors file (for a checkpoint "
            "folder: its model.safetensors, or best.safetensors next to it)"
        )
    if not path.is_file():
        raise FinetuneError(f"weights file {path} does not exist; give the path of a local .pth/.pt/.safetensors file")
    with open(path, "rb") as f:
        head = f.read(9)
    kind = _kind(head)
    if kind is None:
        what = "an empty file" if not head else f"it starts with {head[:8]!r}"
        raise FinetuneError(
            f"{path} is not a weights file: neither safetensors nor a PyTorch file from torch.save ({what}). Give the "
            "weights of a model: a .safetensors file, or torch.save(model.state_dict(), path)"
        )
    state: object  # whatever the file holds, checked below
    try:
        if kind == "safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if kind == "torch" and "weights_only" in str(exc):
            raise FinetuneError(
                f"{path} is a PyTorch file that holds more than tensors (weights_only=True refuses to run its "
                f"code: {type(exc).__name__}); save the weights alone, torch.save(model.state_dict(), path), or as "
                ".safetensors"
            ) from exc
        raise FinetuneError(
            f"{path} is damaged or truncated: it starts as a {kind} file but cannot be read ({type(exc).__name__}: "
            f"{first}); copy it again, or use another copy of the weights"
        ) from exc
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FinetuneError(f"{path} does not hold a state_dict (a dict of tensors)")
    return {key.removeprefix("module.").removeprefix("_orig_mod."): value for key, value in state.items()}


def _kind(head: bytes) -> str | None:
    """The format of a weights file from its first 9 bytes: "torch", "safetensors", or None for neither."""
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":  # torch.save's zip archive, or a legacy pickle
        return "torch"
    if len(head) == 9 and head[8:9] == b"{":  # an 8-byte header length, then the JSON header
        return "safetensors"
    return None
