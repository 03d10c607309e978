"""Section 7, training views: LayerStats, BatchGrid and live hparams, per call and as a share of an epoch.

Runs the Trainer on the main job's model and sizes (ResNet-18 with AdamW, batch 64 of
64 px shapes; --quick: 16 of 32 px) with the three at work and times them:

- LayerStats samples every second step and the trainer logs on those steps, so sampled
  and plain steps alternate in one run and share the machine's load. A sample costs the
  median sampled step minus the median plain step (its hooks run inside the forward, where
  no event timer sees them), less the logger's own work on a log step; that includes the
  flush that reads the sample back and writes its scalars and images.
- LayerStats' activation images, drawn at the epoch end, and
  BatchGrid and TensorBoardLogger: their events, timed by `callbacks.EventTimer`. Live
  hparams cost summaries at fit start and at fit end (once each) and a flush per epoch.

The share of an epoch is the cost at the main job's default cadence (`--layer-stats-every`,
one grid, one flush per epoch) over the epoch section 2 measured without inspection
callbacks, or else the plain step time times the main job's steps per epoch. Budgets: each
at most `VIEW_SHARE_BUDGET`; section 2's whole inspection set at most
`INSPECTION_TOTAL_BUDGET` of an epoch.
"""

from __future__ import annotations

import statistics
import tempfile
from typing import Any

import torch
from torch.utils.data import DataLoader

from benchmarks.callbacks import EventTimer
from benchmarks.common import Bench, main_job_argv, print_table, quiet
from callbacks_kit import BatchGrid, Callback, LayerStats, Order, TensorBoardLogger, Trainer
from callbacks_kit.cli import build_parser
from callbacks_kit.data import ShapesDataset
from callbacks_kit.finetune import build_classifier

VIEW_SHARE_BUDGET = 0.03  # each of LayerStats, BatchGrid and live hparams, share of a main-job epoch
INSPECTION_TOTAL_BUDGET = 0.10  # the main job's whole default inspection set, share of an epoch
STEPS = 20  # timed steps (10 sampled, 10 plain); 8 with --quick


class StepClock(Callback):
    """Notes when each training step ends, after every other callback."""

    order = Order.EXIT + 1

    def __init__(self, timer: EventTimer) -> None:
        self.timer = timer
        self.ends: list[tuple[int, float]] = []

    def on_epoch_start(self, trainer: Trainer) -> None:
        """Where the first step starts."""
        self.ends.append((-1, self.timer.clock()))

    def on_train_batch_end(self, trainer: Trainer) -> None:
        """Where a step ends."""
        self.ends.append((trainer.state.global_step, self.timer.clock()))


def measure(quick: bool) -> dict[str, Any]:
    """One run with the three views at work; seconds per call of each."""
    args = build_parser().parse_args(main_job_argv(_Quick(quick)))
    batch, size = (16, 32) if quick else (args.batch_size, args.image_size or 64)
    steps = 8 if quick else STEPS
    torch.manual_seed(0)
    model = build_classifier(args.model, len(ShapesDataset.classes))
    timer = EventTimer()
    with tempfile.TemporaryDirectory() as log_dir:
        logger = TensorBoardLogger(log_dir, graph=False, summary=False)
        stats, grid = LayerStats(every_n_steps=2), BatchGrid(num_images=args.batch_grid_images)
        clock = StepClock(timer)
        trainer = Trainer(
            model,
            torch.optim.AdamW(model.parameters(), lr=args.lr),
            torch.nn.CrossEntropyLoss(),
            callbacks=[*timer.instrument([logger, stats, grid]), clock],
            log_every_n_steps=2,  # the sampled steps log: each sample is read and written in its own step
            progress_bar=False,
            seed=0,
        )
        loader = DataLoader(ShapesDataset(batch * steps, size, seed=0), batch_size=batch, drop_last=True)
        with quiet():
            trainer.fit(loader, epochs=1)
    calls: dict[str, list[tuple[str, float, float]]] = {r["callback"]: r["calls"] for r in timer.records.values()}

    def seconds(name: str, event: str) -> list[float]:
        return [s for e, _, s in calls.get(name, []) if e == event]

    # Step k (from 1) ends at ends[k]; the first two steps warm up.
    step_times = [(step, b - a) for (_, a), (step, b) in zip(clock.ends, clock.ends[1:], strict=False) if step > 2]
    sampled = [s for step, s in step_times if step % 2 == 0]
    plain = [s for step, s in step_times if step % 2 == 1]
    logger_on_log_steps = seconds("TensorBoardLogger", "on_train_batch_end")[1::2]
    flushes = seconds("LayerStats", "on_train_batch_end")[1::2]
    sample = statistics.median(sampled) - statistics.median(plain) - statistics.median(logger_on_log_steps)
    return {
        "model": args.model,
        "batch": batch,
        "image_size": size,
        "layers": len(stats.names),
        "steps": len(step_times),
        "plain_step_s": statistics.median(plain),
        "sampled_step_s": statistics.median(sampled),
        "layer_stats_sample_s": max(0.0, sample),
        "layer_stats_flush_s": statistics.median(flushes),
        "layer_stats_images_s": sum(seconds("LayerStats", "on_epoch_end")),
        "batch_grid_s": sum(seconds("BatchGrid", "on_train_batch_end")) + sum(seconds("BatchGrid", "on_epoch_end")),
        "hparams_fit_start_s": sum(seconds("TensorBoardLogger", "on_fit_start")),
        "hparams_fit_end_s": sum(seconds("TensorBoardLogger", "on_fit_end")),
        "hparams_epoch_flush_s": sum(seconds("TensorBoardLogger", "on_epoch_end")),
        "main_job_layer_stats_every": args.layer_stats_every,
    }


class _Quick:
    """What `main_job_argv` reads of the benchmark's options."""

    def __init__(self, quick: bool) -> None:
        self.quick = quick


def shares(measured: dict[str, Any], epoch_s: float, steps_per_epoch: int) -> dict[str, float]:
    """Each view's seconds per main-job epoch at its default cadence, over `epoch_s`."""
    every = measured["main_job_layer_stats_every"]
    samples = steps_per_epoch // every if every else 0
    return {
        "LayerStats": (samples * measured["layer_stats_sample_s"] + measured["layer_stats_images_s"]) / epoch_s,
        "BatchGrid": measured["batch_grid_s"] / epoch_s,
        "live hparams": measured["hparams_epoch_flush_s"] / epoch_s,
    }


def run(bench: Bench) -> None:
    """Measure, print the table, check the budgets."""
    measured = measure(bench.args.quick)
    args = build_parser().parse_args(main_job_argv(bench.args))
    train_samples = 192 if bench.args.quick else 3000
    steps_per_epoch = train_samples // (args.batch_size)
    section2 = bench.results.get("callbacks")
    if section2:
        epoch_s, source = section2["epoch_without_inspection_s"], "section 2's epoch without inspection"
    else:
        epoch_s, source = measured["plain_step_s"] * steps_per_epoch, f"{steps_per_epoch} plain steps"
    share = shares(measured, epoch_s, steps_per_epoch)
    measured.update({"epoch_s": epoch_s, "epoch_source": source, "steps_per_epoch": steps_per_epoch, "shares": share})
    bench.results["training_views"] = measured
    m = measured
    samples = steps_per_epoch // m["main_job_layer_stats_every"] if m["main_job_layer_stats_every"] else 0
    print_table(
        f"2c. Training views ({m['model']}, batch {m['batch']} of {m['image_size']} px, {m['layers']} layers; "
        f"epoch {epoch_s:.1f} s = {source})",
        ["view", "ms per call", "calls per main-job epoch", "share of epoch"],
        [
            ["LayerStats sample (with its flush)", f"{m['layer_stats_sample_s'] * 1e3:.1f}", samples,
             f"{share['LayerStats']:.2%}"],
            ["  of which the flush (read, scalars)", f"{m['layer_stats_flush_s'] * 1e3:.1f}", samples, ""],
            ["LayerStats activation images, all layers", f"{m['layer_stats_images_s'] * 1e3:.1f}", 1, ""],
            ["BatchGrid (capture and write)", f"{m['batch_grid_s'] * 1e3:.1f}", "1 (first epoch)",
             f"{share['BatchGrid']:.2%}"],
            ["live hparams: flush at epoch end", f"{m['hparams_epoch_flush_s'] * 1e3:.1f}", 1,
             f"{share['live hparams']:.2%}"],
            ["live hparams: session end at fit end", f"{m['hparams_fit_end_s'] * 1e3:.1f}", "once per run", ""],
        ],
    )  # fmt: skip
    print(
        f"  plain step {m['plain_step_s'] * 1e3:.0f} ms, sampled step {m['sampled_step_s'] * 1e3:.0f} ms (medians "
        f"of {m['steps']} alternating steps after 2 of warm-up)"
    )
    for name, value in share.items():
        bench.check(f"{name}, share of an epoch", value, VIEW_SHARE_BUDGET, enforced=bench.enforce)
    if section2:
        total = sum(r["share_of_epoch"] for r in section2["rows"] if r["inspection"])
        bench.check(
            "whole default inspection set, share of an epoch", total, INSPECTION_TOTAL_BUDGET, enforced=bench.enforce
        )
