"""RunWriter: a run's main SummaryWriter, and one more per split (`train/`, `validation/`...) in its folder.

TensorBoard colours a chart's lines by run and lists the runs as the legend. Each split's
scalars therefore go into a sub-run of the run folder, under the same tag in every split,
as Keras writes them: `loss` of `train/` and of `validation/` are two colours in one chart.

    runs/20250101-120000/            the main writer: images, histograms, text, graph, hparams, lr/*, ...
    runs/20250101-120000/train/      loss (per epoch), loss/step, accuracy/step (MixUpCutMix)
    runs/20250101-120000/validation/ loss, accuracy, ... (one point per validation)
    runs/20250101-120000/validation_ema/, test/ ...
"""

from __future__ import annotations

import os
from typing import Any

from torch.utils.tensorboard import SummaryWriter

from callbacks_kit.compat import fast_event_checksums

TRAIN = "train"


def split_run(prefix: str) -> str:
    """The sub-run folder of a metric prefix: `train`, `validation` for `val`, `validation_<x>` for `val_<x>`."""
    if prefix == "val":
        return "validation"
    if prefix.startswith("val_"):
        return "validation" + prefix[len("val") :]
    return prefix


def split_tag(prefix: str, name: str) -> str:
    """The tag of `<prefix>/<name>` inside its split's sub-run.

    A validation's `name` as it is (`val/loss` -> `loss`). Training logs most values at
    log steps and a few per epoch: `epoch_<x>` is the per-epoch `x` (`train/epoch_loss`
    -> `loss`, in the same chart as the validation loss), anything else is `<x>/step`
    (`train/loss` -> `loss/step`, MixUpCutMix's `train/accuracy` -> `accuracy/step`).
    """
    if prefix != TRAIN:
        return name
    return name[len("epoch_") :] if name.startswith("epoch_") else f"{name}/step"


def best_tag(prefix: str, name: str) -> str:
    """The main run's tag of the best `<prefix>/<name>` so far: `val_best/accuracy`, `val_ema_best/loss`.

    In the main run rather than in the split, so that the hparams dashboard reads it from
    the run itself, whatever folder TensorBoard was started on; and named to sort after
    the split charts in the scalars dashboard.
    """
    return f"{prefix}_best/{name}"


class RunWriter(SummaryWriter):
    """The run's main `SummaryWriter` (`trainer.tb_writer`), with a writer per split made on first use.

    Everything written with the usual `add_*` methods goes into the run folder itself;
    `add_split_scalar(prefix, name, ...)` writes `<prefix>/<name>` into the split's
    sub-run (see `split_run` and `split_tag`). A split's writer takes the run's
    `flush_secs` and `purge_step` (a resumed run drops the interrupted run's later events
    there too); `flush` and `close` reach every writer.

    Args:
        log_dir: The run folder.
        flush_secs: How often each writer's thread flushes to disk.
        purge_step: On resume: events from this step on, left by the interrupted run, are dropped.
    """

    def __init__(self, log_dir: str, flush_secs: int = 120, purge_step: int | None = None, **kwargs: Any) -> None:
        fast_event_checksums()
        super().__init__(log_dir=log_dir, flush_secs=flush_secs, purge_step=purge_step, **kwargs)
        self.flush_secs = flush_secs
        self.purge_step = purge_step
        self.splits: dict[str, SummaryWriter] = {}

    def split(self, prefix: str) -> SummaryWriter:
        """The writer of the split of `prefix` (`train`, `val`, `val_ema`, `test`...), made on first use."""
        folder = split_run(prefix)
        if folder not in self.splits:
            path = os.path.join(self.get_logdir(), folder)
            self.splits[folder] = SummaryWriter(log_dir=path, flush_secs=self.flush_secs, purge_step=self.purge_step)
        return self.splits[folder]

    def add_split_scalar(self, prefix: str, name: str, value: float, step: int) -> None:
        """Write `<prefix>/<name>` (a metric's name in `trainer.state.metrics`) into its split's sub-run."""
        self.split(prefix).add_scalar(split_tag(prefix, name), value, step)

    def flush(self) -> None:
        """Flush the main writer and every split's."""
        super().flush()
        for writer in self.splits.values():
            writer.flush()

    def close(self) -> None:
        """Close the main writer and every split's."""
        super().close()
        for writer in self.splits.values():
            writer.close()


def add_metric(writer: SummaryWriter, prefix: str, name: str, value: float, step: int) -> None:
    """Write the metric `<prefix>/<name>`: into its split through a `RunWriter`, else as that tag."""
    if isinstance(writer, RunWriter):
        writer.add_split_scalar(prefix, name, value, step)
    else:
        writer.add_scalar(f"{prefix}/{name}", value, step)
