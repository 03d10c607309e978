"""What the sections share: the budgets, one run's context and results, clocks, quiet runs, tables."""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

LR = 1e-3  # every optimizer of the benchmark
LOOP_BUDGETS = {"tiny MLP": 1.02, "small CNN": 1.01}  # Trainer (progress bar on) / hand loop, section 1
CALLBACK_SHARE_BUDGET = 0.03  # each inspection callback, share of an epoch (section 2)
HISTOGRAM_SPEEDUP_BUDGET = 4.0  # device histograms against add_histogram, on a CPU (section 4)
EMA_SHARE_BUDGET = 0.10  # one EMA update, share of a ResNet-18 training step (section 9)
Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class Bench:
    """One benchmark run: its options, where it runs, and the results and budgets so far.

    Attributes:
        results: What `--json` writes; each section adds its key, and `budgets` fills.
    """

    args: argparse.Namespace
    device: torch.device
    mixed_precision: str
    results: dict[str, Any]

    @property
    def enforce(self) -> bool:
        """Whether timing budgets count (not with --quick, a smoke run)."""
        return not self.args.quick

    @property
    def budgets(self) -> list[dict[str, Any]]:
        """Every budget checked so far, passed or not."""
        return self.results["budgets"]

    def check(self, name: str, value: float, limit: float, *, at_least: bool = False, enforced: bool = True) -> None:
        """Record a budget: `value` must be at most `limit` (at least, with `at_least`)."""
        passed = value >= limit if at_least else value <= limit
        self.budgets.append({"budget": name, "value": value, "limit": limit, "passed": passed, "enforced": enforced})


def synced_time(device: torch.device) -> float:
    """Wall time once the device's queued work is done (a sync on a GPU; none on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Progress bars and prints still run, into /dev/null; warnings are hidden."""
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull), contextlib.redirect_stderr(devnull):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield


def main_job_argv(args: argparse.Namespace) -> list[str]:
    """`callbacks-kit train` with its defaults for one epoch (smaller with --quick)."""
    argv = ["train", "--epochs", "1"]
    if args.quick:
        argv += ["--train-samples", "192", "--val-samples", "64", "--batch-size", "16", "--image-size", "32"]
    return argv


def machine() -> dict[str, Any]:
    """The CPU, GPU, versions and load of this machine, for the report."""
    import accelerate

    cpuinfo = Path("/proc/cpuinfo")
    names = (
        [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")]
        if cpuinfo.exists()
        else []
    )
    return {
        "cpu": names[0] if names else platform.processor(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "accelerate": accelerate.__version__,
        "platform": platform.platform(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print `title`, then the rows under `header`: the first column left-aligned, the others right."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print(f"\n{title}")
    for n, row in enumerate(cells):
        print(
            "  "
            + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        )
        if n == 0:
            print("  " + "  ".join("-" * w for w in widths))
