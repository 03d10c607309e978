"""TensorBoardLogger: the run's one SummaryWriter (main process only) and its scalars."""

from __future__ import annotations

import os
from datetime import datetime
from typing import TYPE_CHECKING

from torch.utils.tensorboard import SummaryWriter

from callbacks_kit.callbacks.base import Callback

if TYPE_CHECKING:
    from callbacks_kit.trainer import Trainer


def default_log_dir(root: str = "runs") -> str:
    """`runs/<date>_<time>`, like SummaryWriter's default but sortable."""
    return os.path.join(root, datetime.now().strftime("%Y%m%d-%H%M%S"))


def group_names(trainer: Trainer) -> list[str]:
    """A tag-safe name per optimizer param group: its "name" key, or `group<i>`."""
    return [str(group.get("name") or f"group{i}") for i, group in enumerate(trainer.optimizer.param_groups)]


class TensorBoardLogger(Callback):
    """Creates the run's SummaryWriter on the main process and logs scalars.

    Other TensorBoard callbacks write through `trainer.tb_writer`, which stays None on
    the other processes; the trainer flushes and closes it when `fit` ends or fails.

    Scalars: `train/loss` every log interval, `train/epoch_loss`, `val/loss` and
    `val/<metric>` every validation, `lr/<group>` for every param group,
    `perf/samples_per_sec` and `perf/epoch_time_s`.

    Args:
        log_dir: Folder of the run; default `runs/<date>-<time>`.
        flush_secs: How often the writer's thread flushes to disk.
    """

    order = -100  # the writer must exist before other callbacks' on_fit_start

    def __init__(self, log_dir: str | None = None, flush_secs: int = 30) -> None:
        self.log_dir = log_dir
        self.flush_secs = flush_secs
        self._lrs: list[float] = []

    def on_fit_start(self, trainer: Trainer) -> None:
        if not trainer.is_main_process:
            return
        if self.log_dir is None:
            self.log_dir = default_log_dir()
        if trainer.tb_writer is None or trainer.tb_writer.log_dir != self.log_dir:
            trainer.tb_writer = SummaryWriter(log_dir=self.log_dir, flush_secs=self.flush_secs)

    def on_train_batch_start(self, trainer: Trainer) -> None:
        # The LR this batch trains with, before any scheduler moves it at batch end.
        self._lrs = [group["lr"] for group in trainer.optimizer.param_groups]

    def on_train_batch_end(self, trainer: Trainer) -> None:
        writer, state = trainer.tb_writer, trainer.state
        if writer is None or not state.is_log_step:
            return
        step = state.global_step
        writer.add_scalar("train/loss", state.metrics["train/loss"], step)
        writer.add_scalar("perf/samples_per_sec", state.metrics["perf/samples_per_sec"], step)
        for name, lr in zip(group_names(trainer), self._lrs, strict=False):
            writer.add_scalar(f"lr/{name}", lr, step)

    def on_validation_end(self, trainer: Trainer) -> None:
        writer, state = trainer.tb_writer, trainer.state
        if writer is None or state.stage != "validate" or not state.metrics:
            return
        for tag, value in state.metrics.items():
            if tag.startswith("val/"):
                writer.add_scalar(tag, value, state.global_step)

    def on_epoch_end(self, trainer: Trainer) -> None:
        writer, state = trainer.tb_writer, trainer.state
        if writer is None:
            return
        for tag in ("train/epoch_loss", "perf/epoch_time_s"):
            if tag in state.metrics:
                writer.add_scalar(tag, state.metrics[tag], state.global_step)
        for name, group in zip(group_names(trainer), trainer.optimizer.param_groups, strict=True):
            writer.add_scalar(f"lr/{name}", group["lr"], state.global_step)
