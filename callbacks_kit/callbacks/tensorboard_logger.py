"""TensorBoardLogger: the run's writers (main process only), scalars, layout, hparams, graph, summary."""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from callbacks_kit.batches import side_forward
from callbacks_kit.callbacks.base import Callback, Order
from callbacks_kit.callbacks.monitor import MODES, is_better
from callbacks_kit.errors import TrainerError
from callbacks_kit.inspection.hparams import (
    HParamValue,
    MetricColumn,
    collect_hparams,
    group_names,
    hparam_value,
    hparams_summaries,
)
from callbacks_kit.inspection.probe import probe_batch
from callbacks_kit.inspection.run_writer import TRAIN, RunWriter, add_metric, best_tag, split_run, split_tag

if TYPE_CHECKING:
    from callbacks_kit.trainer import Trainer


def default_log_dir(root: str = "runs") -> str:
    """A new, created folder `runs/<date>-<time>` (e.g. `runs/20250101-120000`), sortable.

    A run that starts in the same second as another gets `-2`, `-3`...: each run has its own
    folder, never a second event file in someone else's.
    """
    base = os.path.join(root, datetime.now().strftime("%Y%m%d-%H%M%S"))
    path, n = base, 1
    while True:
        try:
            os.makedirs(path)  # atomic: two runs cannot both claim it
            return path
        except FileExistsError:
            n += 1
            path = f"{base}-{n}"


class TensorBoardLogger(Callback):
    """Creates the run's writers on the main process and logs what every run needs.

    `trainer.tb_writer` is a `RunWriter`: the run's main `SummaryWriter`, through which the
    other TensorBoard callbacks write into the run folder, and one writer per split in a
    sub-run (`train/`, `validation/`, `validation_ema/`): TensorBoard colours and labels
    lines by run, so one chart holds the training and the validation curve in two colours,
    with the runs as its legend. It stays None on the other processes; this callback
    flushes and closes it in `on_teardown`, when `fit` ends or fails.

    - Per split, under the same tag in each: in `train/`, `loss/step` every log interval and
      `loss` (the epoch's mean) every epoch; in `validation/`, `loss`
      and each metric (`accuracy`...) every validation; the same for any other validation
      in its own sub-run (`validation_ema/` for the `val_ema/*` of an `EMA` callback).
    - In the run itself: the best value so far of each validation metric
      (`val_best/<metric>`, `val_ema_best/<metric>`), `optimisation/grad_norm` (the global
      gradient norm, `train/grad_norm`) every log interval, `lr/<group>` for every param
      group, `perf/samples_per_sec`, `perf/data_wait_fraction` (the share of the log interval
      spent waiting for the data loader), `perf/epoch_time_s` and `perf/epoch_data_wait_fraction`.
    - A custom-scalars layout: the losses of every split in one chart, each metric with its
      best, the learning rates together.
    - At the start: the torchinfo summary (printed, and as the text `model/summary`) and
      the model graph (a warning, not a crash, when tracing fails).
    - Live hparams: at the start, the given and collected hyperparameters (booleans as
      booleans) and the metric columns (the best of each validation metric, then
      `hparams_metrics`), in the run's own event file; TensorBoard fills each column from
      the run's latest scalar of that tag as it arrives, so the run is in the hparams
      dashboard from its first step. The session status (success or failure) is written
      at the end; the writers are flushed at every epoch end, so a run killed with SIGKILL
      still shows its metrics up to its last finished epoch.

    Args:
        log_dir: Folder of the run; default `runs/<date>-<time>`.
        flush_secs: How often the writer's thread flushes to disk.
        hparams: Hyperparameters to show in the hparams dashboard, on top of those read
            from the trainer (model, optimizer, lr, batch size, epochs, ...).
        graph: Log the model graph (traced with `torch.jit.trace` on one probe sample).
        summary: Log and print the torchinfo summary.
        summary_depth: Nesting depth of the torchinfo table.
        modes: Which direction is better for a metric, by tag: `{"val/top5_error": "min"}`.
            It decides the `best/<tag>` series and the hparams columns. Tags not given:
            "min" when the name holds "loss" or "err", else "max".
        hparams_metrics: More metric columns for the hparams dashboard, after those the
            logger knows at the start: a metric's name (`"val/accuracy"`, its latest value,
            read from its split's sub-run) or a tag of the run itself (`"val_class/macro/f1"`).
    """

    order = Order.WRITER

    def __init__(
        self,
        log_dir: str | None = None,
        flush_secs: int = 30,
        hparams: Mapping[str, Any] | None = None,
        graph: bool = True,
        summary: bool = True,
        summary_depth: int = 3,
        modes: Mapping[str, str] | None = None,
        hparams_metrics: Sequence[str] = (),
    ) -> None:
        bad = {tag: mode for tag, mode in (modes or {}).items() if mode not in MODES}
        if bad:
            raise TrainerError(f"TensorBoardLogger: modes {bad}: each mode must be 'min' or 'max'")
        self.modes = dict(modes or {})
        self.log_dir = log_dir
        self.flush_secs = flush_secs
        self.hparams = dict(hparams or {})
        self.graph = graph
        self.summary = summary
        self.summary_depth = summary_depth
        self.hparams_metrics = list(hparams_metrics)
        self.best: dict[str, float] = {}
        self._lrs: list[float] = []
        self._lr_logged_at: int | None = None
        self._collected: dict[str, HParamValue] = {}
        self._hparams_started = False

    def state_dict(self) -> dict[str, Any]:
        return {"best": dict(self.best)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = {str(k): float(v) for k, v in state.get("best", {}).items()}

    # ------------------------------------------------------------------------------ events
    def on_fit_start(self, trainer: Trainer) -> None:
        self._collected = collect_hparams(trainer)
        if not trainer.is_main_process:
            return
        if self.log_dir is None:
            self.log_dir = default_log_dir()
        if trainer.tb_writer is None or trainer.tb_writer.log_dir != self.log_dir:
            # On resume, events past the restored step (from the interrupted run) are dropped.
            # Those of the restored step itself were logged before the checkpoint was saved: they stay.
            purge = trainer.state.global_step + 1 if trainer.state.global_step else None
            trainer.tb_writer = RunWriter(self.log_dir, flush_secs=self.flush_secs, purge_step=purge)
        trainer.tb_writer.add_custom_scalars(scalars_layout(list(trainer.metrics), validation_prefixes(trainer)))
        self._hparams_started = False
        self.start_hparams(trainer)
        if self.summary or self.graph:
            example = probe_batch(trainer, 1)
            if example is None:
                warnings.warn(
                    "TensorBoardLogger: no indexable dataset for an example input; no model summary or graph",
                    RuntimeWarning,
                    stacklevel=2,
                )
            else:
                self._log_model(trainer, example[0])

    def on_train_batch_start(self, trainer: Trainer) -> None:
        # The LR this batch trains with, before any scheduler moves it at batch end.
        self._lrs = [group["lr"] for group in trainer.optimizer.param_groups]

    def on_train_batch_end(self, trainer: Trainer) -> None:
        writer, state = trainer.tb_writer, trainer.state
        if writer is None or not state.is_log_step:
            return
        step = state.global_step
        add_metric(writer, TRAIN, "loss", state.metrics["train/loss"], step)
        writer.add_scalar("perf/samples_per_sec", state.metrics["perf/samples_per_sec"], step)
        writer.add_scalar("perf/data_wait_fraction", state.metrics["perf/data_wait_fraction"], step)
        if "train/grad_norm" in state.metrics:
            # A diagnostic of the training process, as lr/* and perf/*: in the run itself, sorted after the splits.
            writer.add_scalar("optimisation/grad_norm", state.metrics["train/grad_norm"], step)
        self._log_lrs(trainer, step)

    def on_validation_end(self, trainer: Trainer) -> None:
        state = trainer.state
        if state.stage != "validate":
            return
        prefix = f"{state.validation_prefix}/"  # "val/", or "val_ema/" for the EMA weights' validation
        for tag, value in state.metrics.items():
            if tag.startswith(prefix) and math.isfinite(value):
                if is_better(value, self.best.get(tag), "min" if self.lower_is_better(tag) else "max"):
                    self.best[tag] = value
        writer = trainer.tb_writer
        if writer is None:
            return
        for tag, value in state.metrics.items():
            if tag.startswith(prefix):
                name = tag[len(prefix) :]
                add_metric(writer, state.validation_prefix, name, value, state.global_step)
                if tag in self.best:
                    writer.add_scalar(best_tag(state.validation_prefix, name), self.best[tag], state.global_step)

    def on_epoch_end(self, trainer: Trainer) -> None:
        writer, state = trainer.tb_writer, trainer.state
        if writer is None:
            return
        if "train/epoch_loss" in state.metrics:
            add_metric(writer, TRAIN, "epoch_loss", state.metrics["train/epoch_loss"], state.global_step)
        if "perf/epoch_time_s" in state.metrics:
            writer.add_scalar("perf/epoch_time_s", state.metrics["perf/epoch_time_s"], state.global_step)
        if "perf/epoch_data_wait_fraction" in state.metrics:
            writer.add_scalar(
                "perf/epoch_data_wait_fraction", state.metrics["perf/epoch_data_wait_fraction"], state.global_step
            )
        if self._lr_logged_at != state.global_step:  # an epoch shorter than the log interval still shows its LR
            self._log_lrs(trainer, state.global_step)
        writer.flush()  # a run killed from here on still shows this epoch in the hparams dashboard

    def _log_lrs(self, trainer: Trainer, step: int) -> None:
        """One point per group and step: the LR the step trained with (not the next one a scheduler set)."""
        assert trainer.tb_writer is not None
        for name, lr in zip(group_names(trainer), self._lrs, strict=False):
            trainer.tb_writer.add_scalar(f"lr/{name}", lr, step)
        self._lr_logged_at = step

    def on_fit_end(self, trainer: Trainer) -> None:
        self.write_hparams(trainer, success=True)

    def on_exception(self, trainer: Trainer) -> None:
        self.write_hparams(trainer, success=False)

    def on_teardown(self, trainer: Trainer) -> None:
        if trainer.tb_writer is not None:
            trainer.tb_writer.flush()
            trainer.tb_writer.close()
            trainer.tb_writer = None

    # ------------------------------------------------------------------------------ pieces
    def lower_is_better(self, tag: str) -> bool:
        """Whether the best value of `tag` is its minimum: `modes[tag]`, else losses and errors."""
        if tag in self.modes:
            return self.modes[tag] == "min"
        return "loss" in tag or "err" in tag

    def metric_columns(self, trainer: Trainer) -> list[MetricColumn]:
        """The hparams dashboard's metric columns, known at the start so the run shows from step 0.

        In order: the best so far of `val/*` and of the other validations' metrics (an
        `EMA`'s `val_ema/*`: see `validation_prefixes`), higher-is-better first, shown as
        `best/<prefix>/<name>`; then `hparams_metrics`. The best values are tags of the run
        itself, which TensorBoard reads whatever folder it was started on.
        """
        columns: list[MetricColumn] = []
        if trainer.val_loader is not None:
            names = ("loss", *trainer.metrics)
            tags = [f"{prefix}/{name}" for prefix in validation_prefixes(trainer) for name in names]
            tags = [t for t in tags if not self.lower_is_better(t)] + [t for t in tags if self.lower_is_better(t)]
            for tag in tags:
                prefix, name = tag.split("/", 1)
                columns.append(MetricColumn(best_tag(prefix, name), display_name=f"best/{tag}"))
        splits = {TRAIN, "test", *validation_prefixes(trainer)}
        for tag in self.hparams_metrics:
            prefix, _, name = tag.partition("/")
            if name and prefix in splits:  # a metric's latest value, in its split's sub-run
                columns.append(MetricColumn(split_tag(prefix, name), group=split_run(prefix), display_name=tag))
            else:
                columns.append(MetricColumn(tag))
        return list({(c.group, c.tag): c for c in columns}.values())

    def start_hparams(self, trainer: Trainer) -> None:
        """Write the hyperparameters and metric columns now (at fit start), once per `fit`.

        Written into the run's own event file (`SummaryWriter.add_hparams` would open a second
        one in a subfolder). TensorBoard keeps the first of these it reads in a run.
        """
        writer = trainer.tb_writer
        if writer is None or self._hparams_started:
            return
        experiment, start, _ = self._summaries(trainer, success=True)
        for summary in (experiment, start):
            # torch leaves SummaryWriter.file_writer unannotated, set to None first: mypy infers None.
            writer.file_writer.add_summary(summary, trainer.state.global_step)  # type: ignore[attr-defined]
        writer.flush()
        self._hparams_started = True

    def write_hparams(self, trainer: Trainer, success: bool = True) -> None:
        """End the hparams session with its status (success or failure), starting it first if needed."""
        writer = trainer.tb_writer
        if writer is None:
            return
        self.start_hparams(trainer)
        end = self._summaries(trainer, success)[2]
        writer.file_writer.add_summary(end, trainer.state.global_step)  # type: ignore[attr-defined]  # as above
        writer.flush()

    def _summaries(self, trainer: Trainer, success: bool) -> tuple[Any, Any, Any]:
        values = {**self._collected, **{k: hparam_value(v) for k, v in self.hparams.items()}}
        given = {k: v for k, v in values.items() if v is not None}
        return hparams_summaries(given, self.metric_columns(trainer), success)

    def _log_model(self, trainer: Trainer, example: Any) -> None:
        writer, model = trainer.tb_writer, trainer.unwrapped_model
        assert writer is not None
        if self.summary:
            try:
                import torchinfo

                data = example if isinstance(example, Mapping) else [example]
                with side_forward(model, trainer.device):
                    table = str(torchinfo.summary(model, input_data=data, depth=self.summary_depth, verbose=0))
                trainer.print(table)
                writer.add_text("model/summary", "    " + table.replace("\n", "\n    "), trainer.state.global_step)
            except Exception as exc:  # a summary is a convenience: never stop training for it
                warnings.warn(f"TensorBoardLogger: torchinfo summary failed: {exc}", RuntimeWarning, stacklevel=2)
        if self.graph:
            output = io.StringIO()  # add_graph prints the tracing error; it goes into the warning instead
            try:
                with side_forward(model, trainer.device), contextlib.redirect_stdout(output), warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # tracer warnings about Python control flow
                    writer.add_graph(model, example, use_strict_trace=False)  # dict outputs (segmentation) too
            except Exception as exc:
                warnings.warn(
                    f"TensorBoardLogger: the model graph could not be traced, so it is not logged "
                    f"({type(exc).__name__}: {str(exc).strip()[:300]})",
                    RuntimeWarning,
                    stacklevel=2,
                )


def validation_prefixes(trainer: Trainer) -> list[str]:
    """The tag prefixes of every epoch's validations: "val", then each that a callback publishes a model for.

    Those come from `Callback.validated_models` (an `EMA`'s "val_ema"), which callbacks
    answer from construction on, so the logger knows them in its `on_fit_start`, before the
    callbacks that publish them have run theirs.
    """
    return ["val", *(prefix for callback in trainer.callbacks for prefix in callback.validated_models())]


def scalars_layout(metric_names: list[str], prefixes: list[str] | None = None) -> dict[str, dict[str, list[Any]]]:
    """The custom-scalars layout: the splits' losses together, each metric with its best, LRs.

    The splits write one tag in their sub-runs (`train/`, `validation/`...), so one chart
    matches them all, each run in its colour. `prefixes` are the validations whose best
    series are shown too (default `["val"]`; with an `EMA` callback also `"val_ema"`).
    """
    shown = prefixes or ["val"]
    metrics = {
        name: [
            "Multiline",
            [rf"^{re.escape(name)}(/step)?$", *(rf"^{re.escape(best_tag(p, name))}$" for p in shown)],
        ]
        for name in metric_names
    }
    layout = {
        "losses": {"loss: train vs validation": ["Multiline", [r"^loss(/step)?$"]]},
        "metrics": metrics,
        "optimisation": {
            "learning rate": ["Multiline", [r"^lr/"]],
            "samples per second": ["Multiline", [r"^perf/samples_per_sec$"]],
            "gradient norm": ["Multiline", [r"^optimisation/grad_norm$"]],
        },
    }
    return {category: charts for category, charts in layout.items() if charts}
