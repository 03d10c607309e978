"""A tqdm progress bar that costs the loop a counter, and a one-line summary per epoch, on the main process only."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from callbacks_kit.callbacks.base import Callback, Order
from callbacks_kit.errors import TrainerError
from callbacks_kit.train_log import INPUT_BOUND_SHARE

if TYPE_CHECKING:
    from callbacks_kit.trainer import Trainer


class ProgressBar(Callback):
    """Shows batches, the latest logged loss and samples/s; prints a summary per epoch.

    The summary holds the epoch's training loss and each `val/<name>` and `val_ema/<name>`;
    per-class values (`val/iou/<class>`, tags with a second `/`) are left to TensorBoard.
    The summary line ends with the epoch's time, its samples/s and the share of its
    training time spent waiting for the data loader (`perf/epoch_data_wait_fraction`),
    marked "input-bound" above `train_log.INPUT_BOUND_SHARE`.

    A batch costs the loop one counter increment: the bar is drawn by a thread of its own
    every `refresh_interval` seconds, from that counter and the metrics of the latest log
    step, so the bar never makes the host wait for the device nor formats text per batch.

    Args:
        bar: Show the tqdm bar (False keeps only the summary lines, for logs).
        summary: Print the one-line epoch summary.
        leave: Keep each epoch's bar on screen after it ends.
        refresh_interval: Seconds between two redraws of the bar.
    """

    order = Order.PROGRESS

    def __init__(
        self, bar: bool = True, summary: bool = True, leave: bool = False, refresh_interval: float = 0.5
    ) -> None:
        if not isinstance(refresh_interval, (int, float)) or not refresh_interval > 0:
            raise TrainerError(
                f"ProgressBar: refresh_interval must be a number of seconds > 0, got {refresh_interval!r}"
            )
        self.bar = bar
        self.summary = summary
        self.leave = leave
        self.refresh_interval = float(refresh_interval)
        self.batches = 0  # batches of the current epoch, counting those a resume skipped
        self._logged: tuple[float, float] | None = None  # loss and samples/s of the latest log step
        self._bar: tqdm | None = None
        self._drawer: threading.Thread | None = None
        self._stop = threading.Event()
        self._epoch_start = 0.0
        self._epoch_samples = 0

    def on_epoch_start(self, trainer: Trainer) -> None:
        state = trainer.state
        self._epoch_start = time.perf_counter()
        self._epoch_samples = state.samples_seen
        self.batches, self._logged = state.batch_idx, None
        if self.bar and trainer.is_main_process:
            self._bar = tqdm(
                total=state.batches_per_epoch,
                initial=state.batch_idx,
                desc=f"epoch {state.epoch + 1}/{state.max_epochs}",
                leave=self.leave,
                dynamic_ncols=True,
                mininterval=0,  # redrawn by the drawer thread only, at its own interval
            )
            self._stop.clear()
            self._drawer = threading.Thread(target=self._draw_every_interval, name="progress bar", daemon=True)
            self._drawer.start()

    def on_train_batch_end(self, trainer: Trainer) -> None:
        self.batches += 1
        if trainer.state.is_log_step:
            metrics = trainer.state.metrics
            # One object, replaced whole: the drawer thread never sees half of an update.
            self._logged = (metrics["train/loss"], metrics["perf/samples_per_sec"])

    def on_epoch_end(self, trainer: Trainer) -> None:
        self._close()
        elapsed = time.perf_counter() - self._epoch_start
        state = trainer.state
        if self.summary and trainer.is_main_process:
            rate = (state.samples_seen - self._epoch_samples) * trainer.accelerator.num_processes / max(elapsed, 1e-9)
            # Validations of this run only: a resumed run keeps the metrics of the checkpoint, and those of a
            # validation it no longer does (`val_ema/*` without an EMA) are not this epoch's. Per-class values
            # (`val/iou/<class>`, tags with a second `/`) are left to TensorBoard.
            validated = [f"{prefix}/" for callback in trainer.callbacks for prefix in callback.validated_models()]
            shown = {
                k: v
                for k, v in state.metrics.items()
                if k.startswith(("train/epoch_loss", "val/", *validated)) and k.count("/") == 1
            }
            values = "  ".join(f"{k} {v:.4f}" for k, v in shown.items())
            wait = state.metrics.get("perf/epoch_data_wait_fraction")
            waiting = "" if wait is None else f", waiting for data {wait:.0%}"
            if wait is not None and wait > INPUT_BOUND_SHARE:
                waiting += ": input-bound"
            summary = f"({elapsed:.1f} s, {rate:.0f} samples/s{waiting})"
            tqdm.write(f"epoch {state.epoch + 1}/{state.max_epochs}  {values}  {summary}")

    def on_teardown(self, trainer: Trainer) -> None:
        self._close()

    def _draw_every_interval(self) -> None:
        while not self._stop.wait(self.refresh_interval):
            self._draw()

    def _draw(self) -> None:
        bar = self._bar
        if bar is None:
            return
        if self._logged is not None:
            loss, rate = self._logged
            bar.set_postfix(loss=f"{loss:.4f}", samples_s=f"{rate:.0f}", refresh=False)
        bar.update(self.batches - bar.n)

    def _close(self) -> None:
        if self._drawer is not None:
            self._stop.set()
            self._drawer.join()
            self._drawer = None
        if self._bar is not None:
            self._draw()  # the final count
            self._bar.close()
            self._bar = None
