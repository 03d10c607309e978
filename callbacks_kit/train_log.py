"""What the training loop reads on the host, and when: the loss, gradient norm and throughput at log steps."""

from __future__ import annotations

import time

import torch
from accelerate import Accelerator

from callbacks_kit.state import LossSums, TrainState


class TrainLog:
    """Counts the samples between log steps and reads the training loss and gradient norm at them.

    The read at a log step (`log`) is the loop's only host read of training values: one
    all-reduced tensor holding the interval's mean loss and the step's gradient norm.
    Between log steps nothing is read, so a step costs no host-device sync.
    """

    def __init__(self, accelerator: Accelerator, state: TrainState) -> None:
        self.accelerator, self.state = accelerator, state
        self.restart()

    def restart(self) -> None:
        """Start a new interval (at an epoch start and after each log step)."""
        self.samples, self.start = 0, time.perf_counter()

    def add(self, samples: int) -> None:
        """One batch of `samples` trained on this process."""
        self.samples += samples
        self.state.samples_seen += samples

    def log(self, sums: LossSums, grad_norm: torch.Tensor | None) -> None:
        """Set `train/loss`, `train/grad_norm` and `perf/samples_per_sec` in the state; mark the log step."""
        device = self.accelerator.device
        # The norm is the same on every process (gradients are reduced): one read for both.
        norm = grad_norm if grad_norm is not None else torch.full((), float("nan"), device=device)
        values = torch.stack([sums.interval_mean().float(), norm.float().to(device)])
        loss, norm_value = self.accelerator.reduce(values, reduction="mean").tolist()
        sums.mark_logged()
        metrics = self.state.metrics
        metrics["train/loss"] = loss
        if grad_norm is not None:
            metrics["train/grad_norm"] = norm_value
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        metrics["perf/samples_per_sec"] = self.samples * self.accelerator.num_processes / elapsed
        self.state.is_log_step = True
        self.restart()
