"""Section 6, throughput: images/s of the Trainer with the main job's default callbacks against the hand loop.

ResNet-50 on synthetic 224 px data, bf16 and fp16, on a GPU (or with --throughput, a
ResNet-18 smoke run on a CPU).
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.common import Batch, Bench, print_table, quiet, synced_time
from benchmarks.workloads import Case, HandLoop
from callbacks_kit import Callback, TensorBoardLogger, Trainer, accuracy
from callbacks_kit.cli import build_parser
from callbacks_kit.cli.job_callbacks import checkpoint_callbacks, inspection_callbacks
from callbacks_kit.compat import reset_accelerator_singletons


class _EpochEndClock(Callback):
    """Notes when the epoch's last callback is done (after validation and epoch-end images)."""

    order = 10**9

    def __init__(self) -> None:
        self.done = 0.0

    def on_epoch_end(self, trainer: Trainer) -> None:
        self.done = synced_time(trainer.device)


class _StartClock:
    """Batches that note when batch `skip` is handed out (after a sync on a GPU)."""

    def __init__(self, batches: list[Batch], skip: int) -> None:
        self.batches, self.skip, self.start = batches, skip, 0.0

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[Batch]:
        for i, batch in enumerate(self.batches):
            if i == self.skip:
                self.start = synced_time(batch[0].device)
            yield batch


def bench_throughput(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Images/s of the hand loop and of the Trainer with the main job's default callbacks.

    ResNet-50 on synthetic 224 px data on a GPU (a ResNet-18 smoke run on a CPU). The
    Trainer's time runs to the end of the epoch: a small validation, the epoch-end
    inspection (histograms, kernels, feature maps, Grad-CAM, confusion matrix) and the
    hand-over of the epoch-end checkpoint (asynchronous) count.
    """
    import torchvision

    gpu = device.type == "cuda"
    name, size, batch, steps, skip = ("resnet50", 224, args.gpu_batch, 60, 10) if gpu else ("resnet18", 32, 8, 6, 2)
    classes = [f"class{i}" for i in range(10)]
    g = torch.Generator().manual_seed(0)
    train = [
        (torch.randn(batch, 3, size, size, generator=g).to(device), torch.randint(10, (batch,), generator=g).to(device))
    ] * (skip + steps)
    val_set = TensorDataset(torch.randn(2 * batch, 3, size, size, generator=g), torch.randint(10, (2 * batch,)))
    rows = []
    for precision in ("bf16", "fp16") if gpu else ("no",):
        torch.manual_seed(0)
        template = getattr(torchvision.models, name)(num_classes=len(classes))
        case = Case(name, template, train, device, precision)
        reset_accelerator_singletons()
        hand = HandLoop(case)
        for i, (inputs, targets) in enumerate(train):
            if i == skip:
                start = synced_time(device)
            hand.step(inputs, targets)
        hand_rate = steps * batch / (synced_time(device) - start)
        del hand
        ns = build_parser().parse_args(["train"])
        with tempfile.TemporaryDirectory() as log_dir, quiet():
            model, optimizer = case.fresh()
            clock, end = _StartClock(train, skip), _EpochEndClock()
            callbacks = [TensorBoardLogger(log_dir), *inspection_callbacks(ns, classes),
                         *checkpoint_callbacks(ns, log_dir), end]  # fmt: skip
            trainer = Trainer(
                model,
                optimizer,
                nn.CrossEntropyLoss(),
                metrics={"accuracy": accuracy},  # as the main job: ModelCheckpoint ranks by val/accuracy
                callbacks=callbacks,
                cpu=not gpu,
                mixed_precision=precision,
                log_every_n_steps=ns.log_every,
            )
            trainer.fit(clock, DataLoader(val_set, batch_size=batch))
        trainer_rate = steps * batch / (end.done - clock.start)
        rows.append(
            {
                "model": name,
                "precision": precision,
                "batch_size": batch,
                "image_size": size,
                "steps": steps,
                "hand_images_per_s": hand_rate,
                "trainer_images_per_s": trainer_rate,
                "ratio": hand_rate / trainer_rate,
            }
        )
    return {"rows": rows}


def run(bench: Bench) -> None:
    """On a GPU or with --throughput: measure and print the table; otherwise say why not."""
    if bench.device.type != "cuda" and not bench.args.throughput:
        print("\n6. Throughput: no GPU here; run with a GPU (or --throughput for a CPU smoke run)")
        return
    throughput = bench.results["throughput"] = bench_throughput(bench.args, bench.device)
    print_table(
        "6. Throughput: hand-written loop against the Trainer with the main job's inspection callbacks "
        "(one epoch, its validation and epoch-end images included)",
        ["model", "precision", "batch", "hand images/s", "Trainer images/s", "hand / Trainer"],
        [
            [
                r["model"],
                r["precision"],
                r["batch_size"],
                f"{r['hand_images_per_s']:.0f}",
                f"{r['trainer_images_per_s']:.0f}",
                f"{r['ratio']:.3f}",
            ]
            for r in throughput["rows"]
        ],
    )
