"""best.safetensors: the best model's weights for inference, written after a better save, checked on resume.

The best model is the trained one, and the file is then a copy of its checkpoint's
model.safetensors (monitor and score in the header); or, when the monitor measures a model
that another callback publishes for its prefix (`Callback.validated_models`: an `EMA`'s
`val_ema/...`), that model's weights, copied on the loop thread at the save's step. The
file is replaced atomically after the commit and after `last.json`, so a kill in between
leaves the earlier best in it: `check_best` finds that on resume, by size and checksum, and
writes the weights of the checkpoint the run's record names as best.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from callbacks_kit.callbacks.base import Callback
from callbacks_kit.callbacks.monitor import Monitor
from callbacks_kit.checkpoint.codec import safetensors_parts
from callbacks_kit.checkpoint.digest import digest
from callbacks_kit.checkpoint.format import BEST_WEIGHTS, META, MODEL
from callbacks_kit.checkpoint.repair import file_matches
from callbacks_kit.checkpoint.store import copy_atomic, write_atomic

if TYPE_CHECKING:
    from callbacks_kit.trainer import Trainer


@dataclass(frozen=True)
class ValidatedWeights:
    """The weights of the model a monitor measures, when another callback publishes it (`owner`: its class)."""

    owner: str
    weights: dict[str, torch.Tensor]

    def parts(self, checkpoint: str) -> list[bytes | memoryview]:
        """best.safetensors for the checkpoint `checkpoint`, as parts: the same bytes for the same weights."""
        return safetensors_parts(self.weights, {"format": "pt", "weights": self.owner, "checkpoint": checkpoint})


def validator(trainer: Trainer, monitor: Monitor | None) -> Callback | None:
    """The first callback publishing a model for the monitor's prefix (an `EMA` for `val_ema/...`), if any."""
    if monitor is None:
        return None
    return next((callback for callback in trainer.callbacks if monitor.prefix in callback.validated_models()), None)


def validated_weights(trainer: Trainer, monitor: Monitor | None) -> ValidatedWeights | None:
    """A host copy of the weights the monitor measures, when another callback's model; None for the trained model.

    Taken on the loop thread, at the save's step: an asynchronous save writes it while the
    average moves on.
    """
    owner = validator(trainer, monitor)
    if owner is None or monitor is None:
        return None
    module = owner.validated_models()[monitor.prefix]
    assert module is not None  # built at the validator's on_fit_start, before any save
    weights = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in module.state_dict().items()}
    return ValidatedWeights(type(owner).__name__, weights)


def write_best(dirpath: Path, folder: Path, validated: ValidatedWeights | None) -> None:
    """Replace best.safetensors with the best checkpoint's weights (after its commit)."""
    if validated is None:
        copy_atomic(folder / MODEL, dirpath / BEST_WEIGHTS)
    else:
        write_atomic(dirpath / BEST_WEIGHTS, validated.parts(folder.name))


def check_best(trainer: Trainer, dirpath: Path, best: str, resumed: str, monitor: Monitor | None) -> str | None:
    """After a resume: make best.safetensors hold the weights of `best`, the record's best; what was done, or None.

    For the trained model, the expected bytes are `best`'s model.safetensors (its size and
    checksum are in meta.json); for a validated model, those `write_best` writes from that
    model, which can be rebuilt only when `best` is the checkpoint resumed from (always the
    case after a kill during the replacement: the best is the newest save).
    """
    path, folder = dirpath / BEST_WEIGHTS, dirpath / best
    owner = validator(trainer, monitor)
    if owner is None:
        expected = json.loads((folder / META).read_text())["files"][MODEL]
        if file_matches(path, expected):
            return None
        if not file_matches(folder / MODEL, expected):
            return f"{path} does not hold the weights of {best!r}, and that checkpoint's {MODEL} is damaged: left as is"
        copy_atomic(folder / MODEL, path)
    else:
        assert monitor is not None
        if best != resumed or owner.validated_models()[monitor.prefix] is None:
            return None  # the weights of an older validated model are in that checkpoint's callback state only
        validated = validated_weights(trainer, monitor)
        assert validated is not None
        parts = validated.parts(best)
        if file_matches(path, digest(parts)):
            return None
        write_atomic(path, parts)
    return (
        f"{path} did not hold the weights of the best checkpoint, {best!r} (a save was interrupted while "
        "replacing it); rewritten from that checkpoint"
    )
