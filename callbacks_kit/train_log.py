"""What the training loop reads on the host, and when: loss, grad norm, throughput and wait for data at log steps."""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from accelerate import Accelerator

from callbacks_kit.errors import TrainerError
from callbacks_kit.state import LossSums, TrainState

# An epoch whose loop waited longer than this share of its time for the next batch is input-bound.
INPUT_BOUND_SHARE = 0.3
# The warning also needs this much waiting in the epoch: in a few batches the loader's start alone can be a third.
INPUT_BOUND_MIN_WAIT_S = 1.0


class TrainLog:
    """Counts samples and the wait for data between log steps, and reads the training values at them.

    The read at a log step (`log`) is the loop's only host read of training values: one
    all-reduced tensor holding the interval's mean loss, the step's gradient norm and the
    share of the interval spent waiting for the data loader. At the epoch's end
    (`end_epoch`) one more holds the epoch's mean loss and wait. Between them nothing is
    read, so a step costs no host-device sync. The wait is measured on the host, around
    the loader's `next()` (`batches`): on a GPU the queued kernels still run while the host
    waits, so a high share means the device is starved only once the queue has drained.
    """

    def __init__(self, accelerator: Accelerator, state: TrainState) -> None:
        self.accelerator, self.state = accelerator, state
        self.warned = False  # the input-bound warning is given once per fit
        self.start_epoch()

    def start_epoch(self) -> None:
        """Start the epoch's clocks (the trainer calls it before the epoch's first batch)."""
        self.epoch_start = time.perf_counter()
        self.epoch_wait = 0.0  # seconds this epoch waited for batches
        self.wait, self.wait_start = 0.0, self.epoch_start  # the same for the current log interval
        self.restart()

    def restart(self) -> None:
        """Start a new interval of samples (at an epoch start and after each log step)."""
        self.samples, self.start = 0, time.perf_counter()

    def batches(self, loader: Iterable[Any]) -> Iterator[Any]:
        """The batches of `loader`, timing how long the loop waits for each (creating the iterator too)."""
        clock = time.perf_counter
        asked = clock()
        iterator = iter(loader)
        for batch in iterator:
            waited = clock() - asked
            self.wait += waited
            self.epoch_wait += waited
            yield batch
            asked = clock()
        waited = clock() - asked  # the end of the data: a worker may still have to finish
        self.wait += waited
        self.epoch_wait += waited

    def add(self, samples: int) -> None:
        """One batch of `samples` trained on this process."""
        self.samples += samples
        self.state.samples_seen += samples

    def log(self, sums: LossSums, grad_norm: torch.Tensor | None) -> None:
        """Set `train/loss`, `train/grad_norm`, `perf/samples_per_sec`, `perf/data_wait_fraction`; mark the log step."""
        device = self.accelerator.device
        now = time.perf_counter()
        waited = torch.full((), self.wait / max(now - self.wait_start, 1e-9), device=device)  # a fill: no copy
        self.wait, self.wait_start = 0.0, now
        # The norm is the same on every process (gradients are reduced): one read for all three.
        norm = grad_norm if grad_norm is not None else torch.full((), float("nan"), device=device)
        values = torch.stack([sums.interval_mean().float(), norm.float().to(device), waited])
        loss, norm_value, wait_share = self.accelerator.reduce(values, reduction="mean").tolist()
        sums.mark_logged()
        metrics = self.state.metrics
        metrics["train/loss"] = loss
        if grad_norm is not None:
            metrics["train/grad_norm"] = norm_value
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        metrics["perf/samples_per_sec"] = self.samples * self.accelerator.num_processes / elapsed
        metrics["perf/data_wait_fraction"] = wait_share
        self.state.is_log_step = True
        self.restart()

    def end_epoch(self, sums: LossSums, resumed: bool) -> None:
        """Set `train/epoch_loss` and `perf/epoch_data_wait_fraction` (one read); warn once if input-bound.

        `resumed`: the epoch went on from a checkpoint saved inside it; resumed after its last
        batch, it trained none and has no values of its own.
        """
        if sums.epoch_batches == 0:
            if not resumed:
                raise TrainerError("train_loader yielded no batches; check the dataset and batch size (drop_last?)")
            self.state.metrics.pop("perf/epoch_data_wait_fraction", None)
            return
        device = self.accelerator.device
        seconds = max(time.perf_counter() - self.epoch_start, 1e-9)
        mean = sums.fold() / sums.epoch_batches
        waited = torch.full((), self.epoch_wait / seconds, device=device, dtype=mean.dtype)
        values = torch.stack([mean, waited])
        loss, wait_share = self.accelerator.reduce(values, reduction="mean").tolist()
        self.state.metrics["train/epoch_loss"] = loss
        self.state.metrics["perf/epoch_data_wait_fraction"] = wait_share
        waited_enough = wait_share * seconds >= INPUT_BOUND_MIN_WAIT_S
        if wait_share > INPUT_BOUND_SHARE and waited_enough and not self.warned and self.accelerator.is_main_process:
            self.warned = True
            warnings.warn(input_bound_advice(wait_share, seconds, self.state.epoch), RuntimeWarning, stacklevel=3)


def input_bound_advice(wait_share: float, seconds: float, epoch: int) -> str:
    """The one-line warning for an input-bound epoch: how much it waited and what to try."""
    return (
        f"input-bound: training waited for data {wait_share:.0%} of epoch {epoch + 1} ({wait_share * seconds:.1f} "
        f"of {seconds:.1f} s). Try more loader workers (--workers N; DataLoader(num_workers=N)), smaller images "
        "(--image-size), or cheaper decoding (images stored at the training size, lighter augmentation)"
    )
