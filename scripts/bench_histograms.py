"""Device histograms (torch.histc + add_histogram_raw) against SummaryWriter.add_histogram.

Times both over every parameter of a ResNet-18, writing to a temporary event file, and
exits non-zero when the speed-up is below --min-ratio (4x by default, from issue 3).

    python scripts/bench_histograms.py [--device cuda] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

import torch
import torchvision
from torch.utils.tensorboard import SummaryWriter

from callbacks_kit.callbacks.histograms import compute_histograms, write_histogram


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--bins", type=int, default=30, help="the WeightHistograms default")
    parser.add_argument("--min-ratio", type=float, default=4.0)
    args = parser.parse_args()
    device = torch.device(args.device)
    params = [(name, p.detach()) for name, p in torchvision.models.resnet18().to(device).named_parameters()]
    numel = sum(p.numel() for _, p in params)

    with tempfile.TemporaryDirectory() as log_dir, SummaryWriter(log_dir) as writer:
        # Each round ends with a flush: the background thread's serialising and CRCs count too.
        def stock(step: int) -> None:
            for name, p in params:
                writer.add_histogram(f"stock/{name}", p, step)
            writer.flush()

        def on_device(step: int) -> None:
            histograms = compute_histograms([p for _, p in params], args.bins)
            for (name, _), histogram in zip(params, histograms, strict=True):
                assert histogram is not None
                write_histogram(writer, f"device/{name}", histogram, step)
            writer.flush()

        timings: dict[str, list[float]] = {"add_histogram": [], "device + add_histogram_raw": []}
        for step in range(args.repeats + 1):  # the first round warms up and is not counted
            for label, fn in (("add_histogram", stock), ("device + add_histogram_raw", on_device)):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                fn(step)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if step:
                    timings[label].append(time.perf_counter() - start)
    print(
        f"ResNet-18: {len(params)} tensors, {numel / 1e6:.1f} M values, {args.bins} bins, device {device}, "
        f"{torch.get_num_threads()} threads, best of {args.repeats}"
    )
    # The best of several rounds: the CPU is shared, and other processes only ever add time.
    best = {label: min(values) for label, values in timings.items()}
    for label, value in best.items():
        print(f"  {label:28s} {value * 1000:8.1f} ms   (median {statistics.median(timings[label]) * 1000:.1f} ms)")
    ratio = best["add_histogram"] / best["device + add_histogram_raw"]
    print(f"speed-up {ratio:.1f}x (required {args.min_ratio:.1f}x)")
    return 0 if ratio >= args.min_ratio else 1


if __name__ == "__main__":
    sys.exit(main())
