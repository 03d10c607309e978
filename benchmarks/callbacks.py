"""Section 2, callbacks: what each callback of the main job costs, per call and as a share of an epoch.

Runs `callbacks-kit train` in-process (`callbacks_kit.cli.train.train`) with its default
options for one epoch of ResNet-18 and times every event of every callback through the
`customize` hook. The inspection callbacks (the classes in `INSPECTION`, plus
`TensorBoardLogger`) have a budget; the others are shown without one.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections.abc import Callable
from typing import Any

import torch

from benchmarks.common import CALLBACK_SHARE_BUDGET, Bench, main_job_argv, print_table, quiet, synced_time
from callbacks_kit import (
    BatchGrid,
    Callback,
    ConfusionMatrix,
    FeatureMaps,
    GradCAM,
    KernelGrid,
    LayerStats,
    TensorBoardLogger,
    Trainer,
    WeightHistograms,
)
from callbacks_kit.callbacks.base import EVENTS
from callbacks_kit.cli import build_parser
from callbacks_kit.cli.train import train

# The main job's inspection callbacks (`callbacks_kit.cli.job_callbacks.inspection_callbacks`).
INSPECTION: tuple[type[Callback], ...] = (
    WeightHistograms,
    KernelGrid,
    FeatureMaps,
    GradCAM,
    ConfusionMatrix,
    LayerStats,
    BatchGrid,
)
# The events `CallbackList.fire` dispatches; `on_teardown` (fire_all, after the run) is not timed.
TIMED_EVENTS = tuple(event for event in EVENTS if event != "on_teardown")


class EventTimer:
    """Times every call of every callback of one run, and notes when each event starts and ends.

    Pass `instrument` as the main job's `customize`: it wraps the event methods of each
    callback it is given (on that instance; the class and its type stay as they are) and
    adds two callbacks that run first and last at every event.

    On a GPU every clock reading waits for the device's queued work (`synced_time`): a
    callback that syncs would otherwise be charged for the backward pass still running when
    it is called, and one that only queues kernels would look free.

    Attributes:
        records: Per callback (by id, in the order of their first call): its class name
            and every call as `(event, start, seconds)`.
        timeline: Per event, when each firing started; per `"<event>/done"`, when it ended.
    """

    def __init__(self, device: torch.device | None = None) -> None:
        self.records: dict[int, dict[str, Any]] = {}
        self.timeline: dict[str, list[float]] = {}
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def clock(self) -> float:
        """Seconds, once the device is idle."""
        return synced_time(self.device)

    def instrument(self, callbacks: list[Callback]) -> list[Callback]:
        """Time each of `callbacks`; the list to train with."""
        for callback in callbacks:
            for event in TIMED_EVENTS:
                setattr(callback, event, self._timed(callback, event, getattr(callback, event)))
        return [
            _EventEdge(self.timeline, self.clock, first=True),
            *callbacks,
            _EventEdge(self.timeline, self.clock, first=False),
        ]

    def _timed(self, callback: Callback, event: str, method: Callable[[Trainer], None]) -> Callable[[Trainer], None]:
        def timed(trainer: Trainer) -> None:
            start = self.clock()
            method(trainer)
            record = self.records.setdefault(id(callback), {"callback": type(callback).__name__, "calls": []})
            record["calls"].append((event, start, self.clock() - start))

        return timed


class _EventEdge(Callback):
    """Notes the time at every event, before all other callbacks (`first`) or after them."""

    def __init__(self, timeline: dict[str, list[float]], clock: Callable[[], float], first: bool) -> None:
        self.order = -(10**9) if first else 10**9
        for event in TIMED_EVENTS:
            times = timeline.setdefault(event if first else f"{event}/done", [])
            setattr(self, event, lambda trainer, times=times: times.append(clock()))


def bench_callbacks(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """Run the main job for one epoch and time each of its callbacks."""
    timer = EventTimer()
    inspection: set[int] = set()

    def customize(callbacks: list[Callback]) -> list[Callback]:
        inspection.update(id(c) for c in callbacks if isinstance(c, (*INSPECTION, TensorBoardLogger)))
        return timer.instrument(callbacks)

    argv = main_job_argv(args)
    with tempfile.TemporaryDirectory() as log_dir:
        ns = build_parser().parse_args([*argv, "--log-dir", log_dir])
        with quiet():
            metrics = train(ns, customize=customize)
    timeline = timer.timeline
    start, end = timeline["on_epoch_start"][0], timeline["on_epoch_end/done"][0]
    rows = []
    for key, record in timer.records.items():
        in_epoch = [s for _, t, s in record["calls"] if start <= t <= end]
        working = [s for s in in_epoch if s > 1e-3]  # calls that did something (a no-op takes microseconds)
        rows.append(
            {
                "callback": record["callback"],
                "inspection": key in inspection,
                "epoch_s": sum(in_epoch),
                "calls_doing_work": len(working),
                "s_per_working_call": statistics.mean(working) if working else 0.0,
                "fit_start_end_s": sum(s for _, t, s in record["calls"] if not start <= t <= end),
            }
        )
    # The share of what the epoch takes without any inspection callback: the slowdown each one causes.
    bare = (end - start) - sum(r["epoch_s"] for r in rows if r["inspection"])
    for row in rows:
        row["share_of_epoch"] = row["epoch_s"] / bare
    return {
        "argv": argv,
        "image_size": ns.image_size or 64,
        "epoch_s": end - start,
        "epoch_without_inspection_s": bare,
        "batches": len(timeline.get("on_train_batch_start", [])),
        "rows": sorted(rows, key=lambda r: -r["epoch_s"]),
        "inspection_found": sorted(r["callback"] for r in rows if r["inspection"]),
        # What the loop itself reports of this epoch's wait for data (section 3 checks it).
        "loop_data_wait_fraction": metrics.get("perf/epoch_data_wait_fraction"),
    }, timeline


def run(bench: Bench) -> dict[str, list[float]]:
    """Measure, print the table, check each inspection callback's budget; the epoch's timeline."""
    callbacks, timeline = bench_callbacks(bench.args)
    bench.results["callbacks"] = callbacks
    print_table(
        f"2. Callbacks of the main job (callbacks-kit {' '.join(callbacks['argv'])}: ResNet-18, "
        f"{callbacks['batches']} batches + validation): epoch {callbacks['epoch_s']:.1f} s, "
        f"{callbacks['epoch_without_inspection_s']:.1f} s without the inspection callbacks",
        ["callback", "inspection", "calls doing work", "ms/call", "s in epoch", "share of epoch", "fit start/end s"],
        [
            [
                r["callback"],
                "yes" if r["inspection"] else "no",
                r["calls_doing_work"],
                f"{r['s_per_working_call'] * 1e3:.1f}",
                f"{r['epoch_s']:.3f}",
                f"{r['share_of_epoch']:.2%}",
                f"{r['fit_start_end_s']:.3f}",
            ]
            for r in callbacks["rows"]
        ],
    )
    print("  share: seconds in the epoch / the epoch without inspection callbacks; a call 'does work' above 1 ms")
    for row in callbacks["rows"]:
        if row["inspection"]:
            bench.check(
                f"{row['callback']}, share of an epoch",
                row["share_of_epoch"],
                CALLBACK_SHARE_BUDGET,
                enforced=bench.enforce,
            )
    return timeline
