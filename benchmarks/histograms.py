"""Section 4, histograms: binning on the device against `SummaryWriter.add_histogram`.

Every parameter of a ResNet-18 and a ResNet-50, every round both with `add_histogram` (host
copy, numpy binning) and with `WeightHistograms`' path (`compute_histograms` on the tensors'
device, then `add_histogram_raw`), into the same event file.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from benchmarks.common import HISTOGRAM_SPEEDUP_BUDGET, Bench, print_table
from callbacks_kit import WeightHistograms
from callbacks_kit.inspection.histogram import compute_histograms, write_histogram

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

Params = list[tuple[str, torch.Tensor]]


def model_params(name: str, device: torch.device) -> Params:
    """Every parameter of torchvision's `name` on `device`, detached, with its name."""
    import torchvision

    return [(n, p.detach()) for n, p in getattr(torchvision.models, name)().to(device).named_parameters()]


def histogram_rounds(
    params: Params, bins: int, rounds: int, clock: Callable[[], float]
) -> tuple[list[float], list[float]]:
    """Seconds of `add_histogram` and of the device path for every parameter, per round.

    One warm-up round first, not counted. Both sides write into one event file and flush
    it, so that each pays for serializing its own events (the writer's thread counts in CPU
    time), and both end with the bins on the host (no device sync needed).
    """
    from torch.utils.tensorboard import SummaryWriter

    stock, on_device = [], []
    with tempfile.TemporaryDirectory() as log_dir, SummaryWriter(log_dir) as writer:
        for step in range(rounds + 1):  # round 0 warms up
            start = clock()
            write_stock(writer, params, step)
            middle = clock()
            write_on_device(writer, params, bins, step)
            if step:
                stock.append(middle - start)
                on_device.append(clock() - middle)
    return stock, on_device


def write_stock(writer: SummaryWriter, params: Params, step: int) -> None:
    """`add_histogram` of every parameter, then a flush."""
    for tag, p in params:
        writer.add_histogram(f"stock/{tag}", p, step)
    writer.flush()


def write_on_device(writer: SummaryWriter, params: Params, bins: int, step: int) -> None:
    """`compute_histograms` of every parameter, `add_histogram_raw` of each, then a flush."""
    for (tag, _), histogram in zip(params, compute_histograms([p for _, p in params], bins), strict=True):
        if histogram is not None:
            write_histogram(writer, f"device/{tag}", histogram, step)
    writer.flush()


def bench_histograms(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """`SummaryWriter.add_histogram` against WeightHistograms' binning on the device."""
    repeats, bins = (1 if args.quick else 7), WeightHistograms().bins  # the callback's default
    # On a CPU, CPU time.
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    rows = []
    for name in ("resnet18",) if args.quick else ("resnet18", "resnet50"):
        params = model_params(name, device)
        stock, on_device = histogram_rounds(params, bins, repeats, clock)
        rows.append(
            {
                "model": name,
                "tensors": len(params),
                "values": sum(p.numel() for _, p in params),
                "add_histogram_s": statistics.median(stock),
                "device_s": statistics.median(on_device),
                "speedup": statistics.median(s / d for s, d in zip(stock, on_device, strict=True)),
            }
        )
    return {"repeats": repeats, "bins": bins, "rows": rows}


def run(bench: Bench) -> None:
    """Measure, print the table, check the speed-up budget (enforced on a CPU)."""
    histograms = bench.results["histograms"] = bench_histograms(bench.args, bench.device)
    print_table(
        f"4. Histograms of every parameter, {histograms['bins']} bins, median of {histograms['repeats']}",
        ["model", "tensors", "values", "add_histogram ms", "device + raw ms", "speed-up"],
        [
            [
                r["model"],
                r["tensors"],
                f"{r['values'] / 1e6:.1f} M",
                f"{r['add_histogram_s'] * 1e3:.0f}",
                f"{r['device_s'] * 1e3:.0f}",
                f"{r['speedup']:.1f}x",
            ]
            for r in histograms["rows"]
        ],
    )
    for row in histograms["rows"]:
        bench.check(
            f"device histograms speed-up, {row['model']}",
            row["speedup"],
            HISTOGRAM_SPEEDUP_BUDGET,
            at_least=True,
            enforced=bench.enforce and bench.device.type == "cpu",
        )
