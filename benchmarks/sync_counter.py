"""Counting host-device syncs on any device, and splitting them by training step.

`HostSyncCounter` records every read of a tensor's value that would make the host wait for
a GPU; `syncs_per_step` fits a Trainer under it and returns the reads of each step. Section
5 of the benchmark reports them; `tests/test_host_syncs.py` asserts there are none on
non-logging steps:

    from benchmarks.sync_counter import HostSyncCounter, syncs_per_step
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from callbacks_kit import Callback, Trainer

REPO = Path(__file__).resolve().parents[1]

# Reads of a tensor's value: on a GPU each makes the host wait for the device.
SYNC_OPS = frozenset(
    {"item", "tolist", "cpu", "numpy", "nonzero", "__float__", "__int__", "__bool__", "__index__", "__format__"}
)
TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
# Where torch hands a Python-level dunder (`Tensor.__format__`) to the mode: not the caller.
TORCH_PLUMBING = (os.path.join(TORCH_DIR, "overrides.py"), os.path.join(TORCH_DIR, "_tensor.py"))
DATALOADER_DIR = os.path.join(TORCH_DIR, "utils", "data") + os.sep

# One step's marks, as `StepBoundary` notes them: (kind, events so far, flag).
Mark = tuple[str, int, bool]


class HostSyncCounter(TorchFunctionMode):
    """Records the tensor reads that would make the host wait for a GPU, on any device.

    Counts `.item()`, `.tolist()`, `.cpu()`, `.numpy()`, `nonzero`, and `float()`, `int()`,
    `bool()`, indexing with and formatting of a tensor, called from code outside torch (the
    trainer, callbacks, Accelerate, user code). Left out: reads inside torch itself (Adam
    reads its step counter, which torch keeps on the CPU on purpose) and reads while a
    DataLoader builds a batch (a Dataset's `__getitem__` works on the host by design). On
    a GPU, `torch.cuda.set_sync_debug_mode` sees everything.

        with HostSyncCounter() as counter:
            trainer.fit(loader)
        counter.events  # ["__float__ at callbacks_kit/trainer.py:420", ...]

    Attributes:
        events: One `"<op> at <file>:<line>"` per read, in order; files inside this
            checkout are relative to it, installed ones relative to site-packages.
    """

    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        if getattr(func, "__name__", "") in SYNC_OPS:
            frame = inspect.currentframe()
            try:
                where = caller_outside_torch(frame.f_back if frame is not None else None)
            finally:
                del frame  # a frame that refers to itself would wait for the cycle collector
            if where is not None:
                self.events.append(f"{func.__name__} at {where}")
        return func(*args, **(kwargs or {}))


def caller_outside_torch(frame: FrameType | None) -> str | None:
    """`file:line` of the code that asked for the value; None for torch itself and data loading."""
    while frame is not None and frame.f_code.co_filename in TORCH_PLUMBING:
        frame = frame.f_back
    if frame is None or frame.f_code.co_filename.startswith(TORCH_DIR):
        return None
    caller, outer = frame, frame.f_back
    while outer is not None:
        if outer.f_code.co_filename.startswith(DATALOADER_DIR):
            return None
        outer = outer.f_back
    path = caller.f_code.co_filename
    path = os.path.relpath(path, REPO) if path.startswith(str(REPO)) else path.split("site-packages/")[-1]
    return f"{path}:{caller.f_lineno}"


class StepBoundary(Callback):
    """Notes where each training step starts and ends in a `HostSyncCounter`'s events.

    `syncs_per_step` adds two: one that runs before every other callback (`first=True`)
    and one that runs after all of them.
    """

    def __init__(self, counter: HostSyncCounter, marks: list[Mark], first: bool) -> None:
        self.order = -(10**9) if first else 10**9
        self.counter, self.marks, self.first = counter, marks, first

    def on_train_batch_start(self, trainer: Trainer) -> None:
        """The first boundary: where the step starts, and whether it is the epoch's first."""
        if self.first:
            self.marks.append(("start", len(self.counter.events), trainer.state.batch_idx == 0))

    def on_train_batch_end(self, trainer: Trainer) -> None:
        """The last boundary: where the step ends, and whether it logged."""
        if not self.first:
            self.marks.append(("end", len(self.counter.events), trainer.state.is_log_step))


def step_boundaries(counter: HostSyncCounter, marks: list[Mark]) -> list[Callback]:
    """The two `StepBoundary` callbacks that fill `marks` for `step_syncs`."""
    return [StepBoundary(counter, marks, first=True), StepBoundary(counter, marks, first=False)]


def step_syncs(counter: HostSyncCounter, marks: list[Mark]) -> list[tuple[bool, list[str]]]:
    """`(is_log_step, sync events)` per step, from the marks of two `StepBoundary` callbacks.

    A step runs from the end of the previous one (the loop's own code between steps
    counts) to the end of its last callback; an epoch's first step starts at its first
    callback (the epoch's end and start are not steps).
    """
    steps, begin = [], None
    for kind, index, flag in marks:
        if kind == "start" and (begin is None or flag):  # flag: the epoch's first batch
            begin = index
        elif kind == "end":  # flag: a log step
            steps.append((flag, counter.events[begin:index]))
            begin = index
    return steps


def syncs_per_step(
    trainer: Trainer, loader: Any, epochs: int = 1, val_loader: Any = None
) -> list[tuple[bool, list[str]]]:
    """Fit `trainer` on `loader` (validating on `val_loader`) and return `(is_log_step, sync events)` per step."""
    counter, marks = HostSyncCounter(), []
    for boundary in step_boundaries(counter, marks):
        trainer.callbacks.append(boundary)
    with counter:
        trainer.fit(loader, val_loader, epochs=epochs)
    return step_syncs(counter, marks)
