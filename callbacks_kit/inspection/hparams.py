"""What the hparams dashboard shows: the hyperparameters a trainer knows, and the summaries that hold them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.tensorboard.summary import hparams

if TYPE_CHECKING:
    from tensorboard.compat.proto.summary_pb2 import Summary

    from callbacks_kit.trainer import Trainer

HParamValue = int | float | str | bool


def group_names(trainer: Trainer) -> list[str]:
    """A tag-safe name per optimizer param group: its "name" key, or `group<i>`."""
    return [str(group.get("name") or f"group{i}") for i, group in enumerate(trainer.optimizer.param_groups)]


def collect_hparams(trainer: Trainer) -> dict[str, HParamValue]:
    """Hyperparameters the trainer knows: model, sizes, optimizer and its groups' settings.

    TensorBoard shows the first five names in alphabetical order at first: batch_size,
    epochs, grad_accum, lr and model.
    """
    model = trainer.unwrapped_model
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # Accelerate wraps it
    values: dict[str, Any] = {
        "model": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "optimizer": type(optimizer).__name__,
        "epochs": trainer.state.max_epochs,
        "batch_size": _loader_batch_size(trainer.train_loader),
        "processes": trainer.accelerator.num_processes,
        "precision": str(trainer.accelerator.mixed_precision),
        "grad_accum": trainer.accelerator.gradient_accumulation_steps,
        "max_grad_norm": trainer.max_grad_norm,
        "seed": trainer.seed,
    }
    names = group_names(trainer)
    for name, group in zip(names, optimizer.param_groups, strict=True):
        suffix = "" if len(names) == 1 else f"/{name}"
        for key in ("lr", "weight_decay", "momentum"):
            if key in group:
                values[key + suffix] = group[key]
    return {k: v for k, v in ((k, hparam_value(v)) for k, v in values.items()) if v is not None}


def _loader_batch_size(loader: Any) -> int | None:
    """Samples per batch and process; a prepared loader keeps it on its batch sampler."""
    size = getattr(loader, "batch_size", None) or getattr(getattr(loader, "batch_sampler", None), "batch_size", None)
    return size if isinstance(size, int) else None


def hparam_value(value: Any) -> HParamValue | None:
    """A value the hparams plugin can show: numbers, strings and bools as they are, others as text."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if value is None or isinstance(value, (int, float, str, bool)):
        return value
    return str(value)


def _set_status(end_summary: Any, status: str) -> None:
    """Rewrite the session-end summary made by `hparams()` (always "success") with `status`."""
    from tensorboard.plugins.hparams.api_pb2 import Status
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    metadata = end_summary.value[0].metadata.plugin_data
    data = HParamsPluginData.FromString(metadata.content)
    data.session_end_info.status = Status.Value(status)
    metadata.content = data.SerializeToString()


def hparams_summaries(
    values: Mapping[str, HParamValue], metrics: Mapping[str, float], success: bool = True
) -> tuple[Summary, Summary, Summary]:
    """The experiment, session-start and session-end summaries for `values` and metric columns `metrics`.

    Written into the run's own event file: TensorBoard reads each metric's value from the
    run's latest scalar of that tag. The session status is success or failure.
    """
    experiment, start, end = hparams(dict(values), dict(metrics))
    if not success:
        _set_status(end, "STATUS_FAILURE")
    return experiment, start, end
