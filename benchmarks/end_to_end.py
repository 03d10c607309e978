"""Section 8, end to end: the main job with its whole default callback set against the same training bare.

`callbacks-kit train` with its default options for one epoch (TensorBoard, the inspection
callbacks, checkpoints with TerminateOnNaN and PreemptionHandler, the progress bar) against
the same command whose callbacks are replaced by nothing (a `ProgressBar(bar=False,
summary=False)` stands in for the bar the Trainer would add: it only counts batches). The
two take turns, `--repeats` times (3 at least); wall time of the whole command, median of
the per-turn ratios. Where the rest goes: every callback's own time in the full runs (all
its events, fit start and end included), and what no callback call explains (a background
checkpoint save competing for the CPU, the TensorBoard writer's thread, noise).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from typing import Any

from benchmarks.callbacks import EventTimer
from benchmarks.common import Bench, main_job_argv, print_table, quiet
from callbacks_kit import Callback, ProgressBar
from callbacks_kit.cli import build_parser
from callbacks_kit.cli.train import train
from callbacks_kit.compat import reset_accelerator_singletons

END_TO_END_BUDGET = 1.10  # the main job with its callbacks / the same training without them, wall time


def _run(argv: list[str], customize: Any) -> float:
    reset_accelerator_singletons()
    with tempfile.TemporaryDirectory() as log_dir:
        ns = build_parser().parse_args([*argv, "--log-dir", log_dir])
        start = time.perf_counter()
        with quiet():
            train(ns, customize=customize)
        return time.perf_counter() - start


def bench_end_to_end(bench: Bench) -> dict[str, Any]:
    """Turns of (full, bare) in alternating order; the per-callback seconds of the full runs."""
    argv = main_job_argv(bench.args)
    if bench.args.e2e_samples and not bench.args.quick:
        argv += ["--train-samples", str(bench.args.e2e_samples), "--val-samples", str(bench.args.e2e_samples // 5)]
    repeats = bench.args.repeats if bench.args.quick else max(3, bench.args.repeats // 5)
    pairs: list[tuple[float, float]] = []
    per_callback: dict[str, list[float]] = {}

    def bare(callbacks: list[Callback]) -> list[Callback]:
        return [ProgressBar(bar=False, summary=False)]

    for repeat in range(repeats):
        timer = EventTimer(bench.device)
        runs = {}
        for kind in ("full", "bare") if repeat % 2 == 0 else ("bare", "full"):
            runs[kind] = _run(argv, timer.instrument if kind == "full" else bare)
        pairs.append((runs["full"], runs["bare"]))
        seconds: dict[str, float] = {}
        for record in timer.records.values():
            seconds[record["callback"]] = seconds.get(record["callback"], 0.0) + sum(s for _, _, s in record["calls"])
        for name, value in seconds.items():
            per_callback.setdefault(name, []).append(value)
    full = statistics.median(f for f, _ in pairs)
    base = statistics.median(b for _, b in pairs)
    rows = sorted(((name, statistics.median(v)) for name, v in per_callback.items()), key=lambda r: -r[1])
    return {
        "argv": argv,
        "repeats": repeats,
        "full_s": full,
        "bare_s": base,
        "ratio": statistics.median(f / b for f, b in pairs),
        "pairs": pairs,
        "callbacks": [{"callback": name, "s": s} for name, s in rows],
        "outside_callbacks_s": full - base - sum(s for _, s in rows),
    }


def run(bench: Bench) -> None:
    """Measure, print where the time goes, check the budget."""
    result = bench.results["end_to_end"] = bench_end_to_end(bench)
    extra = result["full_s"] - result["bare_s"]
    table = [[r["callback"], f"{r['s']:.3f}", f"{r['s'] / result['bare_s']:.2%}"] for r in result["callbacks"]]
    table.append(["(outside any callback call)", f"{result['outside_callbacks_s']:.3f}",
                  f"{result['outside_callbacks_s'] / result['bare_s']:.2%}"])  # fmt: skip
    print_table(
        f"8. End to end: callbacks-kit {' '.join(result['argv'])}, wall time, median of {result['repeats']} turns: "
        f"{result['full_s']:.1f} s with the default callbacks, {result['bare_s']:.1f} s without "
        f"({result['ratio']:.3f}x, {extra:+.1f} s); where the difference goes:",
        ["callback", "s per run", "share of the bare run"],
        table,
    )
    bench.check("main job end to end, callbacks / none", result["ratio"], END_TO_END_BUDGET, enforced=bench.enforce)
