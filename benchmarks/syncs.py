"""Section 5, syncs: host-device syncs on the steps that do not log.

Counted by `HostSyncCounter` on a CPU; on a GPU the steps run under CUDA's sync debug mode
on "error", which raises on any synchronising call. Budget: none on a non-logging step with
the default callbacks and with the TensorBoardLogger (enforced with --quick too: it does not
depend on timing).
"""

from __future__ import annotations

import argparse
import tempfile
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


def bench_syncs(args: argparse.Namespace, device: torch.device, mixed_precision: str) -> dict[str, Any]:
    """Syncs per non-logging step: counted on a CPU, caught by CUDA's sync debug mode on a GPU."""
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
        rows.append({"setup": label, "budgeted": True, **row})
    if device.type == "cpu":
        rows.append({"setup": "main job callbacks", "budgeted": False, **main_job_syncs()})
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


class _SyncDebug(Callback):
    """CUDA's sync debug mode on "error" for the non-logging steps after the first."""

    order = -(10**9)

    def on_train_batch_start(self, trainer: Trainer) -> None:
        due = (trainer.state.global_step + 1) % trainer.log_every_n_steps == 0
        torch.cuda.set_sync_debug_mode("default" if due or trainer.state.batch_idx == 0 else "error")

    def on_train_batch_end(self, trainer: Trainer) -> None:
        if trainer.state.batch_idx + 1 == trainer.state.batches_per_epoch:
            torch.cuda.set_sync_debug_mode("default")  # the epoch's end reads its mean loss


def cuda_sync_check(trainer: Trainer, batches: list[Batch]) -> dict[str, Any]:
    """Fit with CUDA's sync debug mode on "error" during non-logging steps: any sync raises."""
    trainer.callbacks.append(_SyncDebug())
    method = 'torch.cuda.set_sync_debug_mode("error")'
    try:
        trainer.fit(batches)
        return {"method": method, "max_syncs_non_logging": 0}
    except RuntimeError as exc:
        return {"method": method, "max_syncs_non_logging": 1, "where": [str(exc).splitlines()[0]]}
    finally:
        torch.cuda.set_sync_debug_mode("default")


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
            bench.check(f"syncs per non-logging step, {row['setup']}", row["max_syncs_non_logging"], 0)
