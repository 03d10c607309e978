"""Section 8, end to end: the main job with its whole default callback set against the same training bare.

`callbacks-kit train` with its default options, for its default 5 epochs (TensorBoard, the
inspection and error-analysis views, checkpoints with TerminateOnNaN and PreemptionHandler,
the progress bar; `--e2e-epochs` and `--e2e-samples` make it shorter) against the same
command whose callbacks are replaced by nothing (a `ProgressBar(bar=False, summary=False)`
stands in for the bar the Trainer would add: it only counts batches). The two take turns,
`--repeats` times (3 at least); wall time of the whole command, median of the per-turn
ratios, with torch's default number of threads, as the main job runs (`--e2e-threads` to
change it). Every run is a fresh Python process, as a user's main job is: nothing the earlier
sections leave in the benchmark's own process (its heap, its threads, the objects the garbage
collector walks) slows either side. The clock starts once the child has imported torch and
callbacks_kit and stops when `train` returns. The child's CPU time (every thread) is printed
beside it: on a shared machine it shows the work added, which wall time mixes with waiting. Where the rest goes: every
callback's own time in the full runs (all its events, fit start and end included), and what
no callback call explains (a background checkpoint save competing for the CPU, the
TensorBoard writer's thread, noise).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.callbacks import EventTimer
from benchmarks.common import Bench, main_job_argv, print_table, quiet
from callbacks_kit import Callback, ProgressBar
from callbacks_kit.cli import build_parser
from callbacks_kit.cli.train import train
from callbacks_kit.compat import reset_accelerator_singletons

REPO = Path(__file__).resolve().parents[1]
END_TO_END_BUDGET = 1.05  # the main job with its callbacks / the same training without them, wall time


def _run(argv: list[str], customize: Any) -> tuple[float, float]:
    """Wall and CPU seconds of one in-process `callbacks-kit train`."""
    reset_accelerator_singletons()
    with tempfile.TemporaryDirectory() as log_dir:
        ns = build_parser().parse_args([*argv, "--log-dir", log_dir])
        start, cpu_start = time.perf_counter(), time.process_time()
        with quiet():
            train(ns, customize=customize)
        return time.perf_counter() - start, time.process_time() - cpu_start


def _child(kind: str, threads: int, argv: list[str]) -> dict[str, Any]:
    """One run in this (fresh) process: wall and CPU seconds, and each callback's seconds when full."""
    torch.set_num_threads(threads)
    timer = EventTimer(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    wall, cpu = _run(argv, timer.instrument if kind == "full" else _bare)
    seconds: dict[str, float] = {}
    for record in timer.records.values():
        name = record["callback"]
        seconds[name] = seconds.get(name, 0.0) + sum(s for _, _, s in record["calls"])
    return {"wall_s": wall, "cpu_s": cpu, "callbacks": seconds}


def _run_in_child(kind: str, threads: int, argv: list[str]) -> dict[str, Any]:
    """`_child` in a new Python process; its result, or an error carrying the child's stderr."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run.json"
        command = [sys.executable, "-m", "benchmarks.end_to_end", kind, str(threads), str(out), *argv]
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"section 8's {kind} run failed ({' '.join(command)}):\n{done.stderr[-4000:]}")
        return json.loads(out.read_text())


def end_to_end_argv(args: Any) -> list[str]:
    """The main job as the README runs it, or shorter with --e2e-epochs, --e2e-samples or --quick."""
    argv = main_job_argv(args)
    epochs = args.e2e_epochs if args.e2e_epochs else build_parser().parse_args(["train"]).epochs
    argv[argv.index("--epochs") + 1] = str(1 if args.quick else epochs)
    if args.e2e_samples and not args.quick:
        argv += ["--train-samples", str(args.e2e_samples), "--val-samples", str(args.e2e_samples // 5)]
    return argv


def _bare(callbacks: list[Callback]) -> list[Callback]:
    return [ProgressBar(bar=False, summary=False)]


def _turn(argv: list[str], threads: int, full_first: bool) -> dict[str, dict[str, Any]]:
    """One full and one bare run, each in its own process, in the order given."""
    return {kind: _run_in_child(kind, threads, argv) for kind in (("full", "bare") if full_first else ("bare", "full"))}


def bench_end_to_end(bench: Bench) -> dict[str, Any]:
    """Turns of (full, bare) in alternating order; the per-callback seconds of the full runs."""
    argv = end_to_end_argv(bench.args)
    repeats = bench.args.repeats if bench.args.quick else max(3, bench.args.repeats // 5)
    threads = bench.args.e2e_threads or bench.results["default_threads"]
    pairs: list[tuple[float, float]] = []
    cpu_pairs: list[tuple[float, float]] = []
    per_callback: dict[str, list[float]] = {}
    for repeat in range(repeats):
        runs = _turn(argv, threads, full_first=repeat % 2 == 0)
        pairs.append((runs["full"]["wall_s"], runs["bare"]["wall_s"]))
        cpu_pairs.append((runs["full"]["cpu_s"], runs["bare"]["cpu_s"]))
        for name, value in runs["full"]["callbacks"].items():
            per_callback.setdefault(name, []).append(value)
    full = statistics.median(f for f, _ in pairs)
    base = statistics.median(b for _, b in pairs)
    rows = sorted(((name, statistics.median(v)) for name, v in per_callback.items()), key=lambda r: -r[1])
    return {
        "argv": argv,
        "repeats": repeats,
        "threads": threads,
        "full_s": full,
        "bare_s": base,
        "ratio": statistics.median(f / b for f, b in pairs),
        "pairs": pairs,
        "cpu_full_s": statistics.median(f for f, _ in cpu_pairs),
        "cpu_bare_s": statistics.median(b for _, b in cpu_pairs),
        "cpu_ratio": statistics.median(f / b for f, b in cpu_pairs),
        "cpu_pairs": cpu_pairs,
        "callbacks": [{"callback": name, "s": s} for name, s in rows],
        "outside_callbacks_s": full - base - sum(s for _, s in rows),
    }


def run(bench: Bench) -> None:
    """Measure, print where the time goes, check the budget."""
    result = bench.results["end_to_end"] = bench_end_to_end(bench)
    extra = result["full_s"] - result["bare_s"]
    turns = ", ".join(f"{f / b:.3f}" for f, b in result["pairs"])
    table = [[r["callback"], f"{r['s']:.3f}", f"{r['s'] / result['bare_s']:.2%}"] for r in result["callbacks"]]
    table.append(["(outside any callback call)", f"{result['outside_callbacks_s']:.3f}",
                  f"{result['outside_callbacks_s'] / result['bare_s']:.2%}"])  # fmt: skip
    print_table(
        f"8. End to end: callbacks-kit {' '.join(result['argv'])}, {result['threads']} torch thread(s), "
        f"wall time, median of {result['repeats']} turns: "
        f"{result['full_s']:.1f} s with the default callbacks, {result['bare_s']:.1f} s without "
        f"({result['ratio']:.3f}x, {extra:+.1f} s; turns {turns}); CPU time of the process "
        f"{result['cpu_full_s']:.1f} s against {result['cpu_bare_s']:.1f} s ({result['cpu_ratio']:.3f}x); "
        "where the wall-time difference goes:",
        ["callback", "s per run", "share of the bare run"],
        table,
    )
    bench.check("main job end to end, callbacks / none", result["ratio"], END_TO_END_BUDGET, enforced=bench.enforce)


if __name__ == "__main__":  # one run of a turn: python -m benchmarks.end_to_end KIND THREADS OUT ARGV...
    Path(sys.argv[3]).write_text(json.dumps(_child(sys.argv[1], int(sys.argv[2]), sys.argv[4:])))
