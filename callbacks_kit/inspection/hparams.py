"""What the hparams dashboard shows: the hyperparameters a trainer knows, and the summaries that hold them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboard.plugins.hparams.api_pb2 import DataType, Experiment, HParamInfo, MetricInfo, MetricName, Status
from tensorboard.plugins.hparams.metadata import (
    EXPERIMENT_TAG,
    PLUGIN_DATA_VERSION,
    PLUGIN_NAME,
    SESSION_END_INFO_TAG,
    SESSION_START_INFO_TAG,
)
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData, SessionEndInfo, SessionStartInfo

if TYPE_CHECKING:
    from callbacks_kit.trainer import Trainer

HParamValue = int | float | str | bool


def group_names(trainer: Trainer) -> list[str]:
    """A tag-safe name per optimizer param group: its "name" key, or `group<i>`."""
    return [str(group.get("name") or f"group{i}") for i, group in enumerate(trainer.optimizer.param_groups)]


def collect_hparams(trainer: Trainer) -> dict[str, HParamValue]:
    """Hyperparameters the trainer knows: model, sizes, optimizer and its groups' settings.

    A setting the param groups share is one value (`lr`); settings that differ get one
    value per group (`lr/fc`, `lr/layer4`...).
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
    for key in ("lr", "weight_decay", "momentum"):
        settings = {name: group[key] for name, group in zip(names, optimizer.param_groups, strict=True) if key in group}
        if len({str(value) for value in settings.values()}) == 1 and len(settings) == len(names):
            values[key] = next(iter(settings.values()))
        else:
            values.update({f"{key}/{name}": value for name, value in settings.items()})
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


# The hparams TensorBoard shows as columns when the dashboard opens, among those a run has:
# it shows five, the ones marked as differing between sessions first, by name.
SHOWN_FIRST = ("model", "weights", "lr", "batch_size", "epochs", "optimizer")


@dataclass(frozen=True)
class MetricColumn:
    """One metric column of the hparams dashboard: a scalar tag, in the run itself or in a sub-run.

    TensorBoard reads `group`'s tag from the sub-run `<session>/<group>`; the session of a
    run opened as TensorBoard's `--logdir` itself is named ".", where that path does not
    resolve, so the built-in columns are tags of the run itself (group "").
    """

    tag: str
    group: str = ""
    display_name: str = ""


def hparams_summaries(
    values: Mapping[str, HParamValue],
    metrics: Sequence[MetricColumn],
    success: bool = True,
    shown_first: Sequence[str] = SHOWN_FIRST,
) -> tuple[Summary, Summary, Summary]:
    """The experiment, session-start and session-end summaries for `values` and the `metrics` columns.

    Written into the run's own event file: TensorBoard reads each metric's value from the
    run's latest scalar of that tag. Booleans are booleans (torch's `hparams()` writes them
    as numbers), strings strings, other numbers floats. The first five names of
    `shown_first` the run has are marked as the columns TensorBoard shows when the
    dashboard opens (the `differs` flag it chooses them by); the rest are one click away.
    The session status is success or failure.
    """
    shown = [name for name in shown_first if name in values][:5]
    start = SessionStartInfo()
    infos = []
    for name, value in values.items():
        if isinstance(value, bool):
            start.hparams[name].bool_value = value
            kind = "DATA_TYPE_BOOL"
        elif isinstance(value, str):
            start.hparams[name].string_value = value
            kind = "DATA_TYPE_STRING"
        else:
            start.hparams[name].number_value = float(value)
            kind = "DATA_TYPE_FLOAT64"
        infos.append(HParamInfo(name=name, type=DataType.Value(kind), differs=name in shown))
    columns = [MetricInfo(name=MetricName(group=m.group, tag=m.tag), display_name=m.display_name) for m in metrics]
    experiment = HParamsPluginData(experiment=Experiment(hparam_infos=infos, metric_infos=columns))
    status = Status.Value("STATUS_SUCCESS" if success else "STATUS_FAILURE")
    end = HParamsPluginData(session_end_info=SessionEndInfo(status=status))
    return (
        _summary(EXPERIMENT_TAG, experiment),
        _summary(SESSION_START_INFO_TAG, HParamsPluginData(session_start_info=start)),
        _summary(SESSION_END_INFO_TAG, end),
    )


def _summary(tag: str, data: HParamsPluginData) -> Summary:
    """A `Summary` holding one hparams plugin record under `tag`."""
    data.version = PLUGIN_DATA_VERSION
    plugin = SummaryMetadata.PluginData(plugin_name=PLUGIN_NAME, content=data.SerializeToString())
    return Summary(value=[Summary.Value(tag=tag, metadata=SummaryMetadata(plugin_data=plugin))])
