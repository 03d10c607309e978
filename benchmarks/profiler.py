"""Section 10, profiler: what a `Profiler` costs the steps outside its window (nothing, it should be).

The tiny MLP of section 1, where a microsecond shows, trained by the Trainer with its default
callbacks, and by the same Trainer with a `Profiler` whose window comes after the timed steps
(before its window) or came before them (after its window: it has written its trace and
closed). Each run in lockstep with a hand-written Accelerate loop (`Lockstep`), CPU time on a
CPU, runs in a rotating order; a row's ratio to the Trainer is the median of its per-run
ratios to the hand loop over the Trainer's. Budget: each at most `PROFILER_IDLE_BUDGET`.
"""

from __future__ import annotations

import gc
import statistics
import tempfile
from collections.abc import Callable
from typing import Any

from benchmarks.common import Bench, print_table, quiet
from benchmarks.lockstep import Lockstep
from benchmarks.workloads import Case, make_batches, tiny_mlp
from callbacks_kit import Callback, Profiler, Trainer

PROFILER_IDLE_BUDGET = 1.01  # the Trainer with a Profiler outside its window / the same Trainer without, per step
WARMUP, ACTIVE = 1, 2  # the window of both profiled runs
TRAINER = "Trainer (default callbacks)"
BEFORE = "Trainer + Profiler, before its window"
AFTER = "Trainer + Profiler, after its window"


def _runner(make: Callable[[int, str], list[Callback]]) -> Callable[[Case, Lockstep, str], None]:
    def run(case: Case, data: Lockstep, folder: str) -> None:
        model, optimizer = case.fresh()
        cpu = case.device.type == "cpu"
        trainer = Trainer(
            model,
            optimizer,
            case.loss_fn,
            cpu=cpu,
            mixed_precision=case.mixed_precision,
            callbacks=make(len(data), folder),
        )
        trainer.fit(data)

    return run


RUNNERS = {
    TRAINER: _runner(lambda batches, folder: []),
    # The window starts in the untimed tail: the timed steps run before it.
    BEFORE: _runner(lambda batches, folder: [Profiler(batches - WARMUP - ACTIVE - 2, WARMUP, ACTIVE, folder)]),
    # Steps 1 to 3, inside the untimed warm-up: the timed steps run after it closed.
    AFTER: _runner(lambda batches, folder: [Profiler(0, WARMUP, ACTIVE, folder)]),
}


def bench_profiler(bench: Bench) -> dict[str, Any]:
    """Per-step time of the three runners, each run in lockstep with a hand-written loop."""
    args = bench.args
    steps, skip = (30, 5) if args.quick else (args.steps, 20)
    tail = WARMUP + ACTIVE + 2  # untimed steps at the end, where BEFORE's window runs
    case = Case("tiny MLP", tiny_mlp(), make_batches((64, 32), skip + steps + 1 + tail, bench.device), bench.device,
                bench.mixed_precision)  # fmt: skip
    data = Lockstep(case, skip, tail=tail)
    times: dict[str, list[tuple[float, float]]] = {label: [] for label in RUNNERS}
    labels = list(RUNNERS)
    with tempfile.TemporaryDirectory() as folder, quiet():
        for label in labels:  # an untimed round: imports, first allocations, torch.profiler's start-up
            RUNNERS[label](case, data, folder)
        for repeat in range(args.repeats):
            for label in labels[repeat % len(labels) :] + labels[: repeat % len(labels)]:
                gc.collect()
                RUNNERS[label](case, data, folder)
                times[label].append(data.per_step())
    base = statistics.median(f / h for f, h in times[TRAINER])
    rows = []
    for label, pairs in times.items():
        ratio = statistics.median(f / h for f, h in pairs)
        rows.append(
            {
                "runner": label,
                "median_s_per_step": statistics.median(f for f, _ in pairs),
                "x_hand_loop": ratio,
                "x_trainer": ratio / base,
            }
        )
    return {"batch_shape": [64, 32], "steps": steps, "repeats": args.repeats, "rows": rows}


def run(bench: Bench) -> None:
    """Measure, print the table, check that the Profiler costs nothing outside its window."""
    result = bench.results["profiler"] = bench_profiler(bench)
    clock = "CPU" if bench.device.type == "cpu" else "wall"
    print_table(
        f"11. Profiler outside its window: tiny MLP (64, 32), AdamW; {clock} time per optimizer step, median of "
        f"{result['repeats']} runs of {result['steps']} steps, each in lockstep with a hand-written loop",
        ["runner", "ms/step", "x hand loop", "x Trainer"],
        [
            [r["runner"], f"{r['median_s_per_step'] * 1e3:.3f}", f"{r['x_hand_loop']:.3f}", f"{r['x_trainer']:.3f}"]
            for r in result["rows"]
        ],
    )
    for row in result["rows"]:
        if row["runner"] != TRAINER:
            name = row["runner"].removeprefix("Trainer + ")
            bench.check(f"{name} / Trainer, per step", row["x_trainer"], PROFILER_IDLE_BUDGET, enforced=bench.enforce)
