"""Section 1, loop: time per optimizer step of the Trainer and its peers against a hand-written loop.

The Trainer with its default callbacks, and PyTorch Lightning and pytorch-accelerated when
installed, each in lockstep with a hand-written Accelerate loop (same model, data
pre-generated on the device, optimizer); median of the runs; a tiny MLP and a small CNN.
CPU time on a CPU, wall time on a GPU. A second hand-written loop makes the Trainer's
optimizer calls (past Accelerate's wrapper where it adds nothing, `OptimizerCalls`): the
Trainer against it is its own bookkeeping, printed beside the budgeted ratio.
"""

from __future__ import annotations

import argparse
import gc
import statistics
from typing import Any

import torch

from benchmarks.common import LOOP_BUDGETS, Bench, print_table, quiet
from benchmarks.lockstep import Lockstep, Runner
from benchmarks.peers import peer_runners
from benchmarks.workloads import Case, HandLoop, make_batches, small_cnn, tiny_mlp
from callbacks_kit import Trainer
from callbacks_kit.compat import reset_accelerator_singletons

HAND = "hand-written Accelerate loop"
DIRECT = "hand-written loop, the Trainer's optimizer calls"
TRAINER = "callbacks_kit Trainer"


def run_hand_loop(case: Case, data: Lockstep) -> None:
    """A second hand-written loop: the control, whose ratio shows the method's own bias."""
    reset_accelerator_singletons()
    hand = HandLoop(case)
    for inputs, targets in data:
        hand.step(inputs, targets)


def run_direct_hand_loop(case: Case, data: Lockstep) -> None:
    """A hand-written loop that calls the optimizer as the Trainer does: what is left is the Trainer's bookkeeping."""
    reset_accelerator_singletons()
    hand = HandLoop(case, direct=True)
    for inputs, targets in data:
        hand.step(inputs, targets)


def run_trainer(case: Case, data: Lockstep) -> None:
    """callbacks_kit's Trainer with its default callbacks (the progress bar)."""
    model, optimizer = case.fresh()
    cpu = case.device.type == "cpu"
    Trainer(model, optimizer, case.loss_fn, cpu=cpu, mixed_precision=case.mixed_precision).fit(data)


def bench_loop(args: argparse.Namespace, device: torch.device, mixed_precision: str) -> dict[str, Any]:
    """Per-step time of every runner, each run in lockstep with a hand-written loop."""
    steps, skip = (30, 5) if args.quick else (args.steps, 20)
    mlp_data = make_batches((64, 32), skip + steps + 1, device)
    cnn_data = make_batches((32, 3, 32, 32), skip + steps // 10 + 1, device)
    cases = [
        Case("tiny MLP", tiny_mlp(), mlp_data, device, mixed_precision),
        Case("small CNN", small_cnn(), cnn_data, device, mixed_precision),
    ]
    runners: dict[str, Runner] = {
        "hand-written loop (control)": run_hand_loop,
        DIRECT: run_direct_hand_loop,
        TRAINER: run_trainer,
    }
    peers = peer_runners()
    for label, (runner, _) in peers.items():
        if runner is not None and not args.no_peers:
            runners[label] = runner
    results: dict[str, Any] = {"warmup_steps": skip, "peers": {k: note for k, (_, note) in peers.items()}, "cases": []}
    for case in cases:
        data = Lockstep(case, skip)
        times: dict[str, list[tuple[float, float]]] = {label: [] for label in runners}
        labels = list(runners)
        with quiet():
            for label in labels:  # an untimed round: imports, first allocations
                runners[label](case, data)
            for repeat in range(args.repeats):
                for label in labels[repeat % len(labels) :] + labels[: repeat % len(labels)]:  # rotating order
                    gc.collect()
                    runners[label](case, data)
                    times[label].append(data.per_step())
        hand = [h for pairs in times.values() for _, h in pairs]
        rows = [
            {
                "runner": HAND,
                "median_s_per_step": statistics.median(hand),
                "min_s_per_step": min(hand),
                "ratio": 1.0,
                "overhead_us_per_step": 0.0,
            }
        ]
        for label, pairs in times.items():
            framework = [f for f, _ in pairs]
            rows.append(
                {
                    "runner": label,
                    "median_s_per_step": statistics.median(framework),
                    "min_s_per_step": min(framework),
                    # each run against the hand steps that ran beside it
                    "ratio": statistics.median(f / h for f, h in pairs),
                    "overhead_us_per_step": statistics.median(f - h for f, h in pairs) * 1e6,
                }
            )
        by_label = {row["runner"]: row for row in rows}
        bookkeeping = (by_label[TRAINER]["overhead_us_per_step"] - by_label[DIRECT]["overhead_us_per_step"]) / 1e6
        results["cases"].append(
            {
                "case": case.name,
                # The Trainer against the hand loop that makes its optimizer calls: its own bookkeeping,
                # as the difference of their overheads next to the plain hand loop, and over that loop's step.
                "bookkeeping_us_per_step": bookkeeping * 1e6,
                "bookkeeping_ratio": 1 + bookkeeping / by_label[DIRECT]["median_s_per_step"],
                "batch_shape": list(case.batches[0][0].shape),
                "steps": len(case.batches) - 1 - skip,
                "repeats": args.repeats,
                "rows": rows,
            }
        )
    return results


def run(bench: Bench) -> None:
    """Measure, print the table of each model, check the Trainer's budgets."""
    loop = bench.results["loop"] = bench_loop(bench.args, bench.device, bench.mixed_precision)
    clock = "CPU" if bench.device.type == "cpu" else "wall"
    for case in loop["cases"]:
        print_table(
            f"1. Loop overhead: {case['case']} {tuple(case['batch_shape'])}, AdamW, precision "
            f"{bench.mixed_precision}; {clock} time per optimizer step, median of "
            f"{case['repeats']} runs of {case['steps']} steps, each in lockstep with a hand-written loop",
            ["runner", "ms/step", "min ms/step", "x hand loop", "overhead us/step"],
            [
                [
                    r["runner"],
                    f"{r['median_s_per_step'] * 1e3:.3f}",
                    f"{r['min_s_per_step'] * 1e3:.3f}",
                    f"{r['ratio']:.3f}",
                    f"{r['overhead_us_per_step']:+.1f}",
                ]
                for r in case["rows"]
            ],
        )
        print(
            f"  The Trainer's own bookkeeping (against the hand-written loop that calls the optimizer as it "
            f"does): {case['bookkeeping_ratio']:.3f}x, {case['bookkeeping_us_per_step']:+.1f} us/step"
        )
        trainer = next(r for r in case["rows"] if r["runner"] == TRAINER)
        bench.check(
            f"Trainer / hand loop, {case['case']}", trainer["ratio"], LOOP_BUDGETS[case["case"]], enforced=bench.enforce
        )
    for peer, note in loop["peers"].items():
        print(f"  {peer}: {note}" + (" (left out: --no-peers)" if bench.args.no_peers else ""))
