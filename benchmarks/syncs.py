"""Section 5, syncs: host-device syncs on the steps that do not log.

Counted by `HostSyncCounter` on a CPU; on a GPU the steps run under CUDA's sync debug mode on
"warn" (every synchronising call warns) and the warnings of each step are counted: for a tiny
MLP in the benchmark's precision, and for the main job with all its default callbacks in
bf16 and in fp16. Budget: none on a
non-logging step, except with fp16, which is allowed `FP16_SYNCS_PER_STEP`: PyTorch's
`GradScaler.step` reads its found-inf flag with `.item()` to decide whether to step (for a
fused optimizer, which skips on the device, the trainer reads the scale instead to know a
step was skipped). Enforced with --quick too: it does not depend on timing.
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from typing import Any

import torch
from torch import nn

from benchmarks.common import LR, Batch, Bench, print_table, quiet
from benchmarks.sync_counter import HostSyncCounter, step_boundaries, step_syncs, syncs_per_step
from benchmarks.workloads import make_batches, tiny_mlp
from callbacks_kit import Callback, TensorBoardLogger, Trainer
from callbacks_kit.cli import build_parser
from callbacks_kit.cli.train import train

# The main job, a few steps of it, reading the loss every 3 steps.
MAIN_JOB_ARGV = [
    "train",
    "--epochs",
    "1",
    "--train-samples",
    "96",
    "--val-samples",
    "32",
    "--batch-size",
    "16",
    "--image-size",
    "32",
    "--log-every",
    "3",
]


# Host syncs per optimizer step that fp16 loss scaling costs inside PyTorch (GradScaler.step's
# `.item()` of the found-inf flag), or that the trainer pays to see a fused optimizer's skipped step.
FP16_SYNCS_PER_STEP = 1


def allowed_syncs(mixed_precision: str) -> int:
    """Syncs a non-logging step may make: none, or the fp16 loss scaler's one."""
    return FP16_SYNCS_PER_STEP if mixed_precision == "fp16" else 0


def bench_syncs(args: argparse.Namespace, device: torch.device, mixed_precision: str) -> dict[str, Any]:
    """Syncs per non-logging step: counted on a CPU, counted by CUDA's sync debug mode on a GPU."""
    rows = []
    batches = make_batches((16, 32), 12, device)
    for label, with_logger in (("default callbacks", False), ("+ TensorBoardLogger", True)):
        with tempfile.TemporaryDirectory() as log_dir, quiet():
            torch.manual_seed(0)
            model = tiny_mlp()
            trainer = Trainer(
                model,
                torch.optim.AdamW(model.parameters(), lr=LR),
                nn.CrossEntropyLoss(),
                callbacks=[TensorBoardLogger(log_dir)] if with_logger else [],
                cpu=device.type == "cpu",
                mixed_precision=mixed_precision,
                log_every_n_steps=4,
            )
            if device.type == "cuda":
                row = cuda_sync_check(trainer, batches)
            else:
                row = summarize_syncs(syncs_per_step(trainer, batches))
        rows.append({"setup": label, "budgeted": True, "allowed": allowed_syncs(mixed_precision), **row})
    if device.type == "cpu":
        rows.append({"setup": "main job callbacks", "budgeted": False, "allowed": 0, **main_job_syncs()})
    else:
        for precision in ("bf16", "fp16"):
            rows.append(
                {
                    "setup": f"main job callbacks, {precision}",
                    "budgeted": True,
                    "allowed": allowed_syncs(precision),
                    **main_job_cuda_syncs(precision),
                }
            )
    return {"rows": rows}


def summarize_syncs(steps: list[tuple[bool, list[str]]]) -> dict[str, Any]:
    """The most syncs of a non-logging step and of a logging step, and where the former happen."""
    quiet_steps = [events for is_log, events in steps if not is_log]
    log_steps = [events for is_log, events in steps if is_log]
    return {
        "method": "HostSyncCounter",
        "non_logging_steps": len(quiet_steps),
        "max_syncs_non_logging": max((len(e) for e in quiet_steps), default=0),
        "syncs_per_logging_step": max((len(e) for e in log_steps), default=0),
        "where": sorted({w for e in quiet_steps for w in e}),
    }


def main_job_syncs() -> dict[str, Any]:
    """The same count over a few steps of the main job with all its default callbacks."""
    counter, marks = HostSyncCounter(), []

    def add_boundaries(callbacks: list[Callback]) -> list[Callback]:
        return [*callbacks, *step_boundaries(counter, marks)]

    with tempfile.TemporaryDirectory() as log_dir:
        with quiet(), counter:
            train(build_parser().parse_args([*MAIN_JOB_ARGV, "--log-dir", log_dir]), customize=add_boundaries)
    return {**summarize_syncs(step_syncs(counter, marks)), "argv": list(MAIN_JOB_ARGV)}


class _SyncWarnings(Callback):
    """Counts CUDA's sync warnings ("warn" mode) per training step, between the first and last callbacks.

    The first step of each epoch, log steps and the epoch's last step are left out (they read
    on purpose); `steps` gets one `(is_log_step, [warning, ...])` per counted step.
    """

    def __init__(self, log: list[warnings.WarningMessage], steps: list[tuple[bool, list[str]]], first: bool) -> None:
        self.order = -(10**9) if first else 10**9
        self.log, self.steps, self.first = log, steps, first
        self.mark = 0

    def on_train_batch_start(self, trainer: Trainer) -> None:
        if self.first:
            state = trainer.state
            due = (state.global_step + 1) % trainer.log_every_n_steps == 0
            last = state.batches_per_epoch is not None and state.batch_idx + 1 == state.batches_per_epoch
            counted = not (due or last or state.batch_idx == 0)
            torch.cuda.set_sync_debug_mode("warn" if counted else "default")
            self.mark = len(self.log)

    def on_train_batch_end(self, trainer: Trainer) -> None:
        if not self.first and torch.cuda.get_sync_debug_mode() != 0:
            torch.cuda.set_sync_debug_mode("default")
            messages = [str(w.message) for w in self.log[self.partner.mark :]]
            events = [m.splitlines()[0] for m in messages if "synchroniz" in m]
            self.steps.append((trainer.state.is_log_step, events))

    partner: _SyncWarnings


def main_job_cuda_syncs(mixed_precision: str) -> dict[str, Any]:
    """Syncs of the main job's non-logging steps on a GPU, counted from CUDA's sync warnings."""
    steps: list[tuple[bool, list[str]]] = []
    argv = [*MAIN_JOB_ARGV, "--mixed-precision", mixed_precision]
    # quiet() hides warnings: the recording filter must be the inner one.
    with tempfile.TemporaryDirectory() as log_dir, quiet(), warnings.catch_warnings(record=True) as log:
        warnings.simplefilter("always")
        first, last = _SyncWarnings(log, steps, True), _SyncWarnings(log, steps, False)
        last.partner = first
        try:
            train(build_parser().parse_args([*argv, "--log-dir", log_dir]), customize=lambda c: [first, *c, last])
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return {**summarize_syncs(steps), "method": 'torch.cuda.set_sync_debug_mode("warn")', "argv": argv}


def cuda_sync_check(trainer: Trainer, batches: list[Batch]) -> dict[str, Any]:
    """Fit with CUDA's sync debug mode on "warn" during non-logging steps, counting each step's syncs."""
    steps: list[tuple[bool, list[str]]] = []
    with warnings.catch_warnings(record=True) as log:
        warnings.simplefilter("always")
        first, last = _SyncWarnings(log, steps, True), _SyncWarnings(log, steps, False)
        last.partner = first
        trainer.callbacks.append(first)
        trainer.callbacks.append(last)
        try:
            trainer.fit(batches)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return {**summarize_syncs(steps), "method": 'torch.cuda.set_sync_debug_mode("warn")'}


def run(bench: Bench) -> None:
    """Count, print the table and where non-logging steps sync, check the budgeted setups."""
    syncs = bench.results["syncs"] = bench_syncs(bench.args, bench.device, bench.mixed_precision)
    print_table(
        "5. Host-device syncs per training step (log steps: every 4 steps; main job: every 3)",
        ["setup", "method", "non-logging steps", "max syncs", "syncs per logging step"],
        [
            [
                r["setup"],
                r["method"],
                r.get("non_logging_steps", "-"),
                r["max_syncs_non_logging"],
                r.get("syncs_per_logging_step", "-"),
            ]
            for r in syncs["rows"]
        ],
    )
    for row in syncs["rows"]:
        for where in row.get("where", []):
            print(f"  {row['setup']}: a non-logging step syncs: {where}")
        if row["budgeted"]:
            bench.check(f"syncs per non-logging step, {row['setup']}", row["max_syncs_non_logging"], row["allowed"])
