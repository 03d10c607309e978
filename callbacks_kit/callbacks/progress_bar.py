"""A tqdm progress bar and a one-line summary per epoch, on the main process only."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from callbacks_kit.callbacks.base import Callback, Order

if TYPE_CHECKING:
    from callbacks_kit.trainer import Trainer


class ProgressBar(Callback):
    """Shows batches, the latest logged loss and samples/s; prints a summary per epoch.

    The loss shown is the one the trainer read at its last log step: the bar never makes
    the host wait for the device.

    Args:
        bar: Show the tqdm bar (False keeps only the summary lines, for logs).
        summary: Print the one-line epoch summary.
        leave: Keep each epoch's bar on screen after it ends.
    """

    order = Order.PROGRESS

    def __init__(self, bar: bool = True, summary: bool = True, leave: bool = False) -> None:
        self.bar = bar
        self.summary = summary
        self.leave = leave
        self._bar: tqdm | None = None
        self._epoch_start = 0.0
        self._epoch_samples = 0

    def on_epoch_start(self, trainer: Trainer) -> None:
        state = trainer.state
        self._epoch_start = time.perf_counter()
        self._epoch_samples = state.samples_seen
        if self.bar and trainer.is_main_process:
            self._bar = tqdm(
                total=state.batches_per_epoch,
                initial=state.batch_idx,
                desc=f"epoch {state.epoch + 1}/{state.max_epochs}",
                leave=self.leave,
                dynamic_ncols=True,
                mininterval=0.5,
            )

    def on_train_batch_end(self, trainer: Trainer) -> None:
        if self._bar is None:
            return
        self._bar.update(1)
        if trainer.state.is_log_step:
            metrics = trainer.state.metrics
            self._bar.set_postfix(
                loss=f"{metrics['train/loss']:.4f}", samples_s=f"{metrics['perf/samples_per_sec']:.0f}", refresh=False
            )

    def on_epoch_end(self, trainer: Trainer) -> None:
        self._close()
        elapsed = time.perf_counter() - self._epoch_start
        state = trainer.state
        if self.summary and trainer.is_main_process:
            rate = (state.samples_seen - self._epoch_samples) * trainer.accelerator.num_processes / max(elapsed, 1e-9)
            shown = {k: v for k, v in state.metrics.items() if k.startswith(("train/epoch_loss", "val/", "val_ema/"))}
            values = "  ".join(f"{k} {v:.4f}" for k, v in shown.items())
            tqdm.write(f"epoch {state.epoch + 1}/{state.max_epochs}  {values}  ({elapsed:.1f} s, {rate:.0f} samples/s)")

    def on_teardown(self, trainer: Trainer) -> None:
        self._close()

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
