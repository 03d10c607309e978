"""Section 2b, error-analysis views: what TopLosses, ClassReport and Embeddings cost in the main job.

Runs `callbacks-kit train` for one epoch with its defaults (TopLosses with Grad-CAM and
ClassReport are on) and `--embeddings M` (Embeddings' default M), times every call of the
three through section 2's `EventTimer`, and checks each against `VIEW_SHARE_BUDGET` as a
share of the epoch without them. TopLosses and ClassReport work at every validation (one per
epoch by default): their per-batch device work and their end-of-validation rendering fall
in the epoch. Embeddings runs once, at the end of fit: at its default cadence that is once
per main-job run of 5 epochs, so the budgeted share spreads its one call over the run's
epochs; the share with the whole call in one epoch is printed beside it.
"""

from __future__ import annotations

import tempfile
from typing import Any

from benchmarks.callbacks import EventTimer
from benchmarks.common import Bench, main_job_argv, print_table, quiet
from callbacks_kit import ClassReport, Embeddings, TopLosses
from callbacks_kit.callbacks.base import Callback
from callbacks_kit.cli import build_parser
from callbacks_kit.cli.train import train

VIEWS = (TopLosses, ClassReport, Embeddings)
VIEW_SHARE_BUDGET = 0.03  # each view, share of a main-job epoch at its default cadence
DEFAULT_EMBEDDINGS = 500  # Embeddings(num_samples=...)'s default


def bench_views(bench: Bench) -> dict[str, Any]:
    """One main-job epoch with the views; per view: calls, seconds per call, share of the epoch."""
    timer = EventTimer()
    views: set[int] = set()

    def customize(callbacks: list[Callback]) -> list[Callback]:
        views.update(id(c) for c in callbacks if isinstance(c, VIEWS))
        return timer.instrument(callbacks)

    samples = 64 if bench.args.quick else DEFAULT_EMBEDDINGS
    run_epochs = build_parser().parse_args(["train"]).epochs  # the main job's run, over which once-only work spreads
    argv = [*main_job_argv(bench.args), "--embeddings", str(samples)]
    with tempfile.TemporaryDirectory() as log_dir:
        ns = build_parser().parse_args([*argv, "--log-dir", log_dir])
        with quiet():
            train(ns, customize=customize)
    start, end = timer.timeline["on_epoch_start"][0], timer.timeline["on_epoch_end/done"][0]
    rows = []
    for key, record in timer.records.items():
        if key not in views:
            continue
        calls = record["calls"]
        in_epoch = sum(s for _, t, s in calls if start <= t <= end)
        after = sum(s for _, t, s in calls if t > end)
        working = [s for _, _, s in calls if s > 1e-3]
        rows.append(
            {
                "callback": record["callback"],
                "calls_doing_work": len(working),
                "s_per_working_call": sum(working) / len(working) if working else 0.0,
                "epoch_s": in_epoch,
                "after_epoch_s": after,
                "at_default_cadence_s": in_epoch + after / run_epochs,  # per epoch of the main job's run
                "once_in_one_epoch_s": in_epoch + after,
            }
        )
    bare = (end - start) - sum(r["epoch_s"] for r in rows)
    for row in rows:
        row["share_of_epoch"] = row["at_default_cadence_s"] / bare
        row["share_once_in_one_epoch"] = row["once_in_one_epoch_s"] / bare
    return {"argv": argv, "epoch_s": end - start, "epoch_without_views_s": bare, "run_epochs": run_epochs, "rows": rows}


def run(bench: Bench) -> None:
    """Measure, print the table, check each view's budget."""
    results = bench_views(bench)
    bench.results["error_views"] = results
    print_table(
        f"2b. Error-analysis views (callbacks-kit {' '.join(results['argv'])}): epoch {results['epoch_s']:.1f} s, "
        f"{results['epoch_without_views_s']:.1f} s without them",
        [
            "callback",
            "calls doing work",
            "ms/call",
            "s in epoch",
            "s after epoch",
            "share of epoch",
            "all in one epoch",
        ],
        [
            [
                r["callback"],
                r["calls_doing_work"],
                f"{r['s_per_working_call'] * 1e3:.1f}",
                f"{r['epoch_s']:.3f}",
                f"{r['after_epoch_s']:.3f}",
                f"{r['share_of_epoch']:.2%}",
                f"{r['share_once_in_one_epoch']:.2%}",
            ]
            for r in results["rows"]
        ],
    )
    print(
        f"  share of epoch: (seconds in the epoch + the once-per-run seconds after it / {results['run_epochs']}, the "
        "main job's epochs) / the epoch without the views; all in one epoch: the once-per-run seconds counted whole; "
        "a call 'does work' above 1 ms"
    )
    found = {r["callback"] for r in results["rows"]}
    bench.check("error views found in the main job", len(found), len(VIEWS), at_least=True)
    for row in results["rows"]:
        bench.check(
            f"{row['callback']}, share of an epoch", row["share_of_epoch"], VIEW_SHARE_BUDGET, enforced=bench.enforce
        )
