"""Section 3, input: whether the main job waits for its data (built-in shapes; ImageFolder JPEGs).

Also the loop's own account (`perf/epoch_data_wait_fraction`, what users see) against this
section's timing of the same epoch from the event timeline, for section 2's main-job epoch
and for a loader that sleeps, which must be reported input-bound. Budget: the two agree
within `DATA_WAIT_AGREEMENT`.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from benchmarks.common import LR, Bench, print_table, quiet, synced_time

DATA_WAIT_AGREEMENT = 0.02  # |the loop's share of an epoch spent waiting for data - this section's timing of it|
SLOW_BATCH_S = 0.02  # the sleeping loader's delay per batch


def bench_input(
    args: argparse.Namespace,
    callbacks: dict[str, Any],
    timeline: dict[str, list[float]],
    device: torch.device | None = None,
) -> dict[str, Any]:
    """Time waiting for data against time computing, for the main job's two data paths.

    `callbacks` and `timeline` are section 2's results and the timeline of its epoch.
    """
    from callbacks_kit.data import default_workers

    # In the main job's epoch, between a step's end and the next step's start the loop only
    # fetches the next batch (workers: 0 for the built-in shapes).
    waits = [
        s - e for e, s in zip(timeline["on_train_batch_end/done"], timeline["on_train_batch_start"][1:], strict=False)
    ]
    steps = [e - s for s, e in zip(timeline["on_train_batch_start"], timeline["on_train_batch_end/done"], strict=False)]
    wait, step = statistics.median(waits), statistics.median(steps)
    shapes = {
        "image_size": callbacks["image_size"],
        "workers": 0,
        "data_s_per_batch": wait,
        "step_s": step,
        "input_share": wait / (wait + step),
    }
    device = device or torch.device("cpu")
    main_job = {
        "loop_share": callbacks.get("loop_data_wait_fraction"),
        "timed_share": timed_wait_share(timeline),
        "warned": False,
    }
    return {
        "shapes": shapes,
        "image_folder": bench_image_folder(args, default_workers(), device),
        "loop_report": {"main_job": main_job, "slow_loader": bench_slow_loader(60)},
    }


def timed_wait_share(timeline: dict[str, list[float]]) -> float:
    """The share of the first epoch's training that the event timeline shows waiting for batches.

    From the end of `on_epoch_start` to the end of the last `on_train_batch_end`: the time
    before the first `on_train_batch_start` (creating the iterator, the first batch) and
    between each batch's end and the next one's start, where the loop only fetches a batch.
    """
    begin = timeline["on_epoch_start/done"][0]
    starts, ends = timeline["on_train_batch_start"], timeline["on_train_batch_end/done"]
    end = ends[len(starts) - 1]
    waits = starts[0] - begin + sum(s - e for e, s in zip(ends, starts[1:], strict=False))
    return waits / (end - begin)


class _SleepyDataset(Dataset):
    """Pre-made samples behind a delay: a loader that cannot keep up with a tiny model."""

    def __init__(self, n: int, batch: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.x, self.y, self.batch = torch.randn(n, 32, generator=g), torch.randint(10, (n,), generator=g), batch

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        time.sleep(SLOW_BATCH_S / self.batch)
        return self.x[index], self.y[index]


def bench_slow_loader(batches: int) -> dict[str, Any]:
    """Train a tiny MLP for one epoch from `_SleepyDataset`: the loop's share, the timeline's, the warning."""
    from benchmarks.callbacks import EventTimer
    from benchmarks.workloads import tiny_mlp
    from callbacks_kit import Trainer

    timer = EventTimer(torch.device("cpu"))
    model = tiny_mlp()
    trainer = Trainer(
        model,
        torch.optim.AdamW(model.parameters(), lr=LR),
        nn.CrossEntropyLoss(),
        cpu=True,
        callbacks=timer.instrument([]),
        progress_bar=False,
        log_every_n_steps=10,
    )
    with quiet(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        state = trainer.fit(DataLoader(_SleepyDataset(batches * 4, 4), batch_size=4), epochs=1)
    return {
        "batches": batches,
        "loop_share": state.metrics["perf/epoch_data_wait_fraction"],
        "timed_share": timed_wait_share(timer.timeline),
        "warned": any(str(w.message).startswith("input-bound") for w in caught),
    }


def bench_image_folder(args: argparse.Namespace, workers: int, device: torch.device) -> dict[str, Any]:
    """JPEGs through the main job's ImageFolder loader (default workers) against ResNet-18 steps on `device`."""
    import torchvision
    from PIL import Image

    from callbacks_kit.data import image_folder_datasets, make_loader

    n, batch, size = (24, 8, 112) if args.quick else (192, 32, 224)
    with tempfile.TemporaryDirectory() as root:
        g = torch.Generator().manual_seed(0)
        for i in range(n):
            folder = Path(root, "val" if i % 4 == 0 else "train", f"class{i % 3}")
            folder.mkdir(parents=True, exist_ok=True)
            pixels = (torch.rand(size * 8 // 7, size * 8 // 7, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)
        train_set, _, classes = image_folder_datasets(root, size)
        loader = make_loader(train_set, batch, shuffle=True, workers=workers)
        epoch_s = []
        for _ in range(2):  # the second epoch reuses the persistent workers
            start = time.perf_counter()
            count = sum(images.shape[0] for images, _ in loader)
            epoch_s.append(time.perf_counter() - start)
        del loader
    model = torchvision.models.resnet18(num_classes=len(classes)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    images = torch.randn(batch, 3, size, size).to(device)
    targets = torch.randint(len(classes), (batch,)).to(device)
    step_s = []
    for _ in range(3):
        start = synced_time(device)
        nn.functional.cross_entropy(model(images), targets).backward()
        optimizer.step()
        optimizer.zero_grad()
        step_s.append(synced_time(device) - start)
    load_rate, train_rate = count / epoch_s[-1], batch / statistics.median(step_s[1:])
    return {
        "image_size": size,
        "device": device.type,
        "workers": workers,
        "images": count,
        "batch_size": batch,
        "load_images_per_s": load_rate,
        "first_epoch_s": epoch_s[0],
        "train_images_per_s": train_rate,
        "input_bound": load_rate < train_rate,
    }


def run(bench: Bench, timeline: dict[str, list[float]]) -> None:
    """Measure (from section 2's epoch and an ImageFolder of JPEGs) and print the table."""
    inputs = bench.results["input"] = bench_input(bench.args, bench.results["callbacks"], timeline, bench.device)
    s, f = inputs["shapes"], inputs["image_folder"]
    print_table(
        "3. Input: waiting for data against computing (ResNet-18)",
        ["data", "workers", "loading", "training", "verdict"],
        [
            [
                f"main job, built-in shapes {s['image_size']} px",
                s["workers"],
                f"{s['data_s_per_batch'] * 1e3:.1f} ms/batch",
                f"{s['step_s'] * 1e3:.1f} ms/step",
                f"{s['input_share']:.1%} of the loop waits for data",
            ],
            [
                f"--data ImageFolder {f['image_size']} px, batch {f['batch_size']}",
                f["workers"],
                f"{f['load_images_per_s']:.0f} images/s",
                f"{f['train_images_per_s']:.0f} images/s",
                "input-bound" if f["input_bound"] else "not input-bound",
            ],
        ],
    )
    reports = inputs["loop_report"]
    slow = reports["slow_loader"]
    labels = {
        "main_job": "main job (section 2's epoch)",
        "slow_loader": f"a loader {SLOW_BATCH_S * 1e3:.0f} ms per batch, tiny MLP, {slow['batches']} batches",
    }
    rows = []
    for key, report in reports.items():
        loop, timed = report["loop_share"], report["timed_share"]
        rows.append([labels[key], f"{loop:.1%}", f"{timed:.1%}", f"{abs(loop - timed) * 100:.1f} pt",
                     "yes" if report["warned"] else "no"])  # fmt: skip
        bench.check(f"data wait, the loop's / timed here, {key.replace('_', ' ')}", abs(loop - timed),
                    DATA_WAIT_AGREEMENT, enforced=bench.enforce)  # fmt: skip
    print_table(
        "3. Input as the loop reports it (perf/epoch_data_wait_fraction) against the event timeline of the same epoch",
        ["epoch", "the loop's share", "timed here", "difference", "input-bound warning"],
        rows,
    )
