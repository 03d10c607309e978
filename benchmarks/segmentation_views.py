"""Section 2d, segmentation views: what each view of `callbacks-kit train --task segmentation` costs.

Runs the segmentation job for one epoch with its defaults (its views are on), times every
call of `SegmentationOverlays`, `WorstSegmentations`, `PixelConfusionMatrix` and
`SegmentationReport` through section 2's `EventTimer`, and the metric objects behind
`val/mean_iou` and the per-class scalars (`SegmentationMetrics`: their updates at each
validation batch, their one compute), and checks each against `VIEW_SHARE_BUDGET` as a share
of the epoch without them. Every one of them works at every validation (one per epoch by
default), so all of its work falls in the epoch.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from typing import Any

from benchmarks.callbacks import EventTimer
from benchmarks.common import Bench, print_table, quiet
from callbacks_kit import (
    Callback,
    Order,
    PixelConfusionMatrix,
    SegmentationOverlays,
    SegmentationReport,
    Trainer,
    WorstSegmentations,
)
from callbacks_kit.cli import build_parser
from callbacks_kit.cli.train import train

VIEWS = (SegmentationOverlays, WorstSegmentations, PixelConfusionMatrix, SegmentationReport)
VIEW_SHARE_BUDGET = 0.03  # each segmentation view, and the metrics, share of a segmentation-job epoch
METRICS = "SegmentationMetrics (val/* metrics)"


def segmentation_argv(quick: bool) -> list[str]:
    """`callbacks-kit train --task segmentation` with its defaults for one epoch (smaller with --quick)."""
    argv = ["train", "--task", "segmentation", "--epochs", "1"]
    if quick:
        argv += ["--train-samples", "96", "--val-samples", "32", "--batch-size", "16", "--image-size", "32"]
    return argv


class MetricClock(Callback):
    """Wraps the trainer's metric objects at fit start so that their update and compute calls are timed."""

    order = Order.WRITER - 1

    def __init__(self, timer: EventTimer) -> None:
        self.timer = timer
        self.calls: list[tuple[str, float, float]] = []

    def on_fit_start(self, trainer: Trainer) -> None:
        """Time every metric object's `update` and `compute`."""
        for metric in trainer.metrics.values():
            for name in ("update", "compute"):
                if callable(getattr(metric, name, None)):
                    setattr(metric, name, self._timed(name, getattr(metric, name)))

    def _timed(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = self.timer.clock()
            try:
                return method(*args, **kwargs)
            finally:
                self.calls.append((name, start, self.timer.clock() - start))

        return timed


def bench_views(bench: Bench) -> dict[str, Any]:
    """One segmentation-job epoch with the views; per view and for the metrics: calls, seconds, share of the epoch."""
    timer = EventTimer()
    clock = MetricClock(timer)
    views: set[int] = set()

    def customize(callbacks: list[Callback]) -> list[Callback]:
        views.update(id(c) for c in callbacks if isinstance(c, VIEWS))
        return [clock, *timer.instrument(callbacks)]

    argv = segmentation_argv(bench.args.quick)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as log_dir:
        ns = build_parser().parse_args([*argv, "--log-dir", log_dir])
        with quiet():
            train(ns, customize=customize)
    start, end = timer.timeline["on_epoch_start"][0], timer.timeline["on_epoch_end/done"][0]
    rows = []
    for key, record in timer.records.items():
        if key in views:
            rows.append(_row(record["callback"], [(t, s) for _, t, s in record["calls"]], start, end))
    rows.append(_row(METRICS, [(t, s) for _, t, s in clock.calls], start, end))
    bare = (end - start) - sum(r["epoch_s"] for r in rows)
    for row in rows:
        row["share_of_epoch"] = row["epoch_s"] / bare
    return {
        "argv": argv,
        "epoch_s": end - start,
        "epoch_without_views_s": bare,
        "run_s": time.perf_counter() - started,
        "rows": rows,
    }


def _row(name: str, calls: list[tuple[float, float]], start: float, end: float) -> dict[str, Any]:
    in_epoch = [s for t, s in calls if start <= t <= end]
    working = [s for s in in_epoch if s > 1e-3]
    return {
        "callback": name,
        "calls": len(in_epoch),
        "calls_doing_work": len(working),
        "s_per_working_call": sum(working) / len(working) if working else 0.0,
        "epoch_s": sum(in_epoch),
    }


def run(bench: Bench) -> None:
    """Measure, print the table, check each view's budget."""
    results = bench_views(bench)
    bench.results["segmentation_views"] = results
    print_table(
        f"2d. Segmentation views (callbacks-kit {' '.join(results['argv'])}): epoch {results['epoch_s']:.1f} s, "
        f"{results['epoch_without_views_s']:.1f} s without them",
        ["view", "calls", "calls doing work", "ms/call", "s in epoch", "share of epoch"],
        [
            [
                r["callback"],
                r["calls"],
                r["calls_doing_work"],
                f"{r['s_per_working_call'] * 1e3:.1f}",
                f"{r['epoch_s']:.3f}",
                f"{r['share_of_epoch']:.2%}",
            ]
            for r in results["rows"]
        ],
    )
    print("  share of epoch: seconds in the epoch / the epoch without the views and metrics; 'doing work': above 1 ms")
    found = {r["callback"] for r in results["rows"]} - {METRICS}
    bench.check("segmentation views found in the job", len(found), len(VIEWS), at_least=True)
    for row in results["rows"]:
        bench.check(
            f"{row['callback']}, share of an epoch", row["share_of_epoch"], VIEW_SHARE_BUDGET, enforced=bench.enforce
        )
