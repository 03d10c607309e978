"""Resume: find a checkpoint, verify every byte of it, restore the training state, and say where to go on.

Exactness (docs/design.md, "Exact resume"): the shuffle order comes from the seedable
sampler, whose seed is restored and whose epoch the trainer sets at every epoch; the global
RNG states are put back after the resumed epoch's DataLoader iterator is created (creating
it draws a base seed), or right before the epoch when the checkpoint is at an epoch
boundary. `restore_training` returns that as a `ResumePoint`, which the loop consumes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import safetensors.torch
import torch

from callbacks_kit.checkpoint.codec import join_tensors
from callbacks_kit.checkpoint.digest import checksum_matches
from callbacks_kit.checkpoint.format import (
    FORMAT,
    META,
    MODEL,
    POINTER,
    STATE_JSON,
    STATE_TENSORS,
    TMP_PREFIX,
    VERSION,
)
from callbacks_kit.checkpoint.position import restore_position
from callbacks_kit.checkpoint.store import describe, list_checkpoints, read_pointer
from callbacks_kit.errors import CheckpointError

if TYPE_CHECKING:
    from callbacks_kit.state import ResumePoint
    from callbacks_kit.trainer import Trainer


@dataclass
class LoadedCheckpoint:
    """A verified checkpoint folder: its meta and the bytes of its files."""

    path: Path
    meta: dict[str, Any]
    files: dict[str, bytes] = field(default_factory=dict)

    def json(self, name: str) -> Any:
        """A JSON file of the checkpoint, parsed."""
        return json.loads(self.files[name])

    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        """A safetensors file of the checkpoint, loaded on the CPU."""
        return safetensors.torch.load(self.files[name])


def resolve_checkpoint(resume_from: str | os.PathLike[str], directory: Path | None) -> Path | None:
    """The checkpoint folder `resume_from` names; None for "last" or "auto" when nothing was saved yet.

    Accepts "last" or "auto" (the newest in `directory`, the `ModelCheckpoint`'s folder; None
    when there is none), a checkpoint folder, a folder holding `last.json`, or `last.json` itself.
    """
    if str(resume_from) in ("last", "auto"):
        if directory is None:
            raise CheckpointError(
                f"resume_from={str(resume_from)!r} looks in the ModelCheckpoint's folder, and this trainer has no "
                "ModelCheckpoint; add one, or pass the path of a checkpoint folder"
            )
        return _last_in(directory)
    path = Path(resume_from)
    if not path.exists():
        near = describe(path.parent) if path.parent.is_dir() else f"{path.parent} does not exist either"
        raise CheckpointError(f"resume_from={str(resume_from)!r} does not exist ({near}); check the path")
    if path.is_file() and path.name == POINTER:
        path = path.parent
    if path.is_dir() and not (path / META).exists() and (path / POINTER).exists():
        return _last_in(path)
    if path.is_file():
        raise CheckpointError(
            f"resume_from={str(resume_from)!r} is a file; it takes a checkpoint folder written by ModelCheckpoint, "
            "its parent folder, or 'last'. Weights-only files such as best.safetensors load with "
            "callbacks_kit.finetune.load_weights(model, path)"
        )
    if path.name.startswith(TMP_PREFIX):
        raise CheckpointError(f"{path} is an unfinished save (it was interrupted); {describe(path.parent)}")
    if not (path / META).exists():
        raise CheckpointError(
            f"{path} is not a checkpoint folder (it has no {META}); {describe(path)}. Pass a folder that "
            "ModelCheckpoint wrote, or the folder holding its last.json"
        )
    return path


def _last_in(directory: Path) -> Path | None:
    name = read_pointer(directory)
    if name is not None:
        if not (directory / name).is_dir():
            raise CheckpointError(
                f"{directory / POINTER} points to {name!r}, which is gone (deleted by hand?); {describe(directory)}. "
                "Pass one of those as resume_from"
            )
        return directory / name
    found = list_checkpoints(directory)  # a kill between the very first commit and its pointer
    return directory / found[-1][0] if found else None


def read_checkpoint(path: str | os.PathLike[str]) -> LoadedCheckpoint:
    """Read a checkpoint folder and check the size and checksum of every file against meta.json.

    Raises:
        CheckpointError: missing, corrupt, truncated, or of another format version.
    """
    path = Path(path)
    advice = f"pick another checkpoint ({describe(path.parent)}) or start over without resume_from"
    try:
        meta = json.loads((path / META).read_bytes())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is not a checkpoint folder (no {META}); {advice}") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path / META} is corrupt ({exc}); {advice}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} was not written by callbacks_kit's ModelCheckpoint; {advice}")
    if int(meta.get("version", 0)) > VERSION:
        raise CheckpointError(f"{path} has format version {meta['version']}; upgrade callbacks_kit to read it")
    loaded = LoadedCheckpoint(path, meta)
    for name, expected in meta["files"].items():
        try:
            data = (path / name).read_bytes()
        except OSError as exc:
            reason = f"cannot be read ({exc.strerror}); the checkpoint is incomplete"
            raise CheckpointError(f"{path / name} {reason}; {advice}") from None
        if len(data) != expected["bytes"]:
            raise CheckpointError(
                f"{path / name} is truncated or altered: {len(data)} bytes where {expected['bytes']} were "
                f"written; {advice}"
            )
        if not checksum_matches(expected, [data]):
            raise CheckpointError(f"{path / name} is corrupt (its checksum differs from the one saved); {advice}")
        loaded.files[name] = data
    return loaded


def _check_model(weights: dict[str, torch.Tensor], model: torch.nn.Module, path: Path) -> None:
    own = model.state_dict()
    only_ckpt = [k for k in weights if k not in own]
    only_model = [k for k in own if k not in weights]
    shapes = [
        f"{k}: {list(weights[k].shape)} in the checkpoint, {list(own[k].shape)} here"
        for k in weights
        if k in own and weights[k].shape != own[k].shape
    ]
    if only_ckpt or only_model or shapes:
        parts = [
            f"{len(only_ckpt)} keys only in the checkpoint ({', '.join(only_ckpt[:3])})" if only_ckpt else "",
            f"{len(only_model)} only in this model ({', '.join(only_model[:3])})" if only_model else "",
            f"{len(shapes)} of another shape ({'; '.join(shapes[:3])})" if shapes else "",
        ]
        raise CheckpointError(
            f"{path} was saved from a different model: {', '.join(p for p in parts if p)}. Resume with the model "
            "it was trained with; to start a new run from its weights, use callbacks_kit.finetune.load_weights"
        )


def _check_optimizer(saved: dict[str, Any], optimizer: torch.optim.Optimizer, path: Path) -> None:
    ours = [len(g["params"]) for g in optimizer.param_groups]
    theirs = [len(g["params"]) for g in saved["param_groups"]]
    if ours != theirs:
        raise CheckpointError(
            f"{path} holds an optimizer with parameter groups of sizes {theirs}, this one has {ours}; resume with "
            "the same optimizer setup (param groups, frozen layers) as the saved run"
        )


def restore_training(
    trainer: Trainer, resume_from: str | os.PathLike[str], directory: str | os.PathLike[str] | None
) -> ResumePoint | None:
    """Restore model, optimizer, scaler, callbacks and `trainer.state` from a checkpoint.

    Called by `Trainer.fit` after the loaders are prepared and before `on_fit_start`. Every
    check runs before the first thing is changed, except the optimizer's group sizes,
    which are compared after the callbacks' states (a freeze callback may add groups).

    Args:
        trainer: The trainer to restore, read and written through its public state.
        resume_from: "last" or "auto" (the same: the newest checkpoint in `directory`, a fresh
            start when there is none), or a path `resolve_checkpoint` accepts.
        directory: Where "last" looks: the folder the trainer's callbacks save checkpoints
            into (`CallbackList.checkpoint_dir()`), None when none does.

    Returns:
        Where the loop goes on (batches to skip or the samples left, RNG states, loss sums),
        or None when "last" or "auto" found nothing yet (the run starts from scratch).
    """
    directory = Path(directory) if directory is not None else None
    path = resolve_checkpoint(resume_from, directory)
    if path is None:
        trainer.print(f"resume {resume_from}: no checkpoint yet in {directory}; starting from scratch")
        return None
    ckpt = read_checkpoint(path)
    try:
        weights, doc, tensors = ckpt.tensors(MODEL), ckpt.json(STATE_JSON), ckpt.tensors(STATE_TENSORS)
    except (ValueError, KeyError, safetensors.SafetensorError) as exc:
        raise CheckpointError(f"{path} cannot be parsed ({exc}); pick another checkpoint") from None
    _check_model(weights, trainer.unwrapped_model, path)
    accelerator, state = trainer.accelerator, trainer.state
    trainer.unwrapped_model.load_state_dict(weights, strict=True)
    saved_callbacks = doc["callbacks"]
    stateful = trainer.callbacks.stateful()
    used: dict[str, str] = {}  # callback's state_key -> the saved key it loads
    for callback in stateful:
        key = callback.saved_state_key(saved_callbacks.keys())
        if key is not None and key not in used.values():
            callback.load_state_dict(join_tensors(saved_callbacks[key], tensors))
            used[callback.state_key] = key
    missing = [c.state_key for c in stateful if c.state_key not in used]
    extra = sorted(set(saved_callbacks) - set(used.values()) - {c.state_key for c in trainer.callbacks})
    if missing or extra:
        trainer.print(f"resume: callback states not in the checkpoint: {missing}; saved but unused: {extra}")
    optimizer_state = join_tensors(doc["optimizer"], tensors)
    _check_optimizer(optimizer_state, trainer.optimizer, path)
    trainer.optimizer.load_state_dict(optimizer_state)
    if accelerator.scaler is not None and doc.get("scaler") is not None:
        accelerator.scaler.load_state_dict(join_tensors(doc["scaler"], tensors))
    resume = restore_position(trainer, path, int(ckpt.meta["world_size"]), doc, ckpt.files)
    trainer.print(
        f"resume: from {path} at epoch {state.epoch + 1}, batch {resume.batches_to_skip} (step {state.global_step})"
    )
    if state.should_stop:
        trainer.print("resume: the checkpoint was saved when training was stopped (early stopping): nothing to do")
    elif state.epoch >= state.max_epochs:
        trainer.print(f"resume: the checkpoint already has {state.epoch} epochs; pass a larger `epochs` to go on")
    return resume
