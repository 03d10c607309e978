"""The benchmark's command line: options, the sections in order, the budgets, the JSON, the exit status."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import torch

import benchmarks
from benchmarks import (
    callbacks,
    checkpoints,
    ema,
    end_to_end,
    error_views,
    histograms,
    inputs,
    loop,
    profiler,
    segmentation_views,
    startup,
    syncs,
    throughput,
    training_views,
)
from benchmarks.common import Bench, machine, print_table


def callbacks_and_input(bench: Bench) -> None:
    """Sections 2 and 3: the input section reads the epoch the callbacks section timed."""
    timeline = callbacks.run(bench)
    inputs.run(bench, timeline)


class Section(NamedTuple):
    """A step of the run: the `--skip` name that leaves it out (None: never), and what it runs."""

    skip: str | None
    run: Callable[[Bench], None]


SECTIONS = (
    Section("loop", loop.run),  # 1
    Section("callbacks", callbacks_and_input),  # 2 and 3
    Section("error-views", error_views.run),  # 2b
    Section("segmentation-views", segmentation_views.run),  # 2d
    Section("histograms", histograms.run),  # 4
    Section("syncs", syncs.run),  # 5
    Section(None, throughput.run),  # 6: on a GPU, or with --throughput
    Section("views", training_views.run),  # 2c: reads section 2's epoch when it ran
    Section("checkpoints", checkpoints.run),  # 7
    Section("end-to-end", end_to_end.run),  # 8
    Section("ema", ema.run),  # 9
    Section("startup", startup.run),  # 10
    Section("profiler", profiler.run),  # 11
)


def build_parser() -> argparse.ArgumentParser:
    """The options of `python scripts/benchmark.py`."""
    parser = argparse.ArgumentParser(description=benchmarks.__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="a fast smoke run: tiny sizes, timing budgets not enforced"
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--repeats", type=int, default=None, help="runs per runner and model (15; 3 with --quick)")
    parser.add_argument("--steps", type=int, default=400, help="timed steps per run on the MLP (a tenth on the CNN)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for every section")
    parser.add_argument("--no-peers", action="store_true", help="leave Lightning and pytorch-accelerated out")
    parser.add_argument("--throughput", action="store_true", help="run section 6 on a CPU too (a smoke run)")
    parser.add_argument("--gpu-batch", type=int, default=256, help="ResNet-50 batch size of section 6 on a GPU")
    parser.add_argument(
        "--checkpoint-batch", type=int, default=16, help="section 7's batch size (16: short steps; the main job's: 64)"
    )
    parser.add_argument(
        "--e2e-samples", type=int, default=None, help="training images of section 8's main job (its default: 3000)"
    )
    parser.add_argument(
        "--e2e-threads", type=int, default=None, help="torch threads of section 8 (the main job's default: torch's)"
    )
    parser.add_argument("--e2e-epochs", type=int, default=None, help="epochs of section 8's main job (its default: 5)")
    parser.add_argument("--skip", nargs="*", default=[], choices=[s.skip for s in SECTIONS if s.skip])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run every section not skipped, print the budgets, write --json; 1 when a budget is missed."""
    args = build_parser().parse_args(argv)
    args.repeats = args.repeats or (3 if args.quick else 15)
    default_threads = torch.get_num_threads()  # what `callbacks-kit train` gets, for section 8
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    mixed_precision = "bf16" if device.type == "cuda" else "no"
    bench = Bench(
        args,
        device,
        mixed_precision,
        results={
            "machine": machine(),
            "device": str(device),
            "mixed_precision": mixed_precision,
            "threads": args.threads,
            "default_threads": default_threads,
            "quick": args.quick,
            "budgets": [],
            "command": " ".join(["python scripts/benchmark.py", *(argv or sys.argv[1:])]),
        },
    )
    m = bench.results["machine"]
    print(
        f"callbacks_kit benchmark on {device}: {m['cpu']}, {m['cpus']} CPUs, {args.threads} torch thread(s), "
        f"{m['gpu'] or 'no GPU'}; torch {m['torch']}, accelerate {m['accelerate']}"
        + ("\n--quick: a smoke run, timings mean nothing" if args.quick else "")
    )
    for section in SECTIONS:
        if section.skip not in args.skip:
            section.run(bench)
    return report_budgets(bench)


def report_budgets(bench: Bench) -> int:
    """Print the budgets, write the results to --json; the exit status (1 when an enforced one failed)."""
    print_table(
        "Budgets" + ("" if bench.enforce else " (--quick: timing budgets shown, not enforced)"),
        ["budget", "value", "limit", "result"],
        [
            [
                b["budget"],
                f"{b['value']:.3f}",
                f"{b['limit']}",
                ("pass" if b["passed"] else "FAIL") + ("" if b["enforced"] else " (not enforced)"),
            ]
            for b in bench.budgets
        ],
    )
    failed = [b for b in bench.budgets if b["enforced"] and not b["passed"]]
    bench.results["passed"] = not failed
    if bench.args.json:
        bench.args.json.parent.mkdir(parents=True, exist_ok=True)
        bench.args.json.write_text(json.dumps(bench.results, indent=2, default=str))
        print(f"\nresults written to {bench.args.json}")
    print("\nall budgets pass" if not failed else f"\n{len(failed)} budget(s) missed")
    return 1 if failed else 0
