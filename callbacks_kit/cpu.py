"""CPU thread control for the many tiny tensor operations the toolkit runs on the host."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


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
