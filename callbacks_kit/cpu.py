"""The CPU: whether the launch forces it, and thread control for the toolkit's many tiny host-side operations."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def cpu_forced() -> bool:
    """True when the launch asks for the CPU through `ACCELERATE_USE_CPU` (as Accelerate reads it)."""
    return os.environ.get("ACCELERATE_USE_CPU", "").strip().lower() in ("1", "true", "yes", "y", "on")


@contextmanager
def one_cpu_thread() -> Iterator[None]:
    """Run the block with one intra-op thread, then restore the previous count.

    Small host-side ops (drawing a shapes sample, binning histograms) gain nothing from
    several threads, and on a loaded machine the threads' waits cost 10x the work itself.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
