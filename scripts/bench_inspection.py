"""Time every callback of the main job, per event, against the epoch time.

Runs `callbacks-kit train` with the given options (default: the main job for 2 epochs)
and prints, per callback: seconds at fit start (one-off), seconds per epoch afterwards,
and that as a share of an epoch.

    python scripts/bench_inspection.py [train options...]
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections import defaultdict
from typing import Any

from callbacks_kit import cli
from callbacks_kit.callbacks.base import CallbackList

timings: dict[tuple[str, str], list[float]] = defaultdict(list)
marks: dict[str, float] = {}


def timed_fire(self: CallbackList, event: str, trainer: Any) -> None:
    if event == "on_epoch_start":
        marks.setdefault("first_epoch_start", time.perf_counter())
    for callback in self:
        start = time.perf_counter()
        getattr(callback, event)(trainer)
        timings[(type(callback).__name__, event)].append(time.perf_counter() - start)
    if event == "on_epoch_end":
        marks["last_epoch_end"] = time.perf_counter()


def main() -> int:
    argv = sys.argv[1:] or ["--epochs", "2"]
    with tempfile.TemporaryDirectory() as run_dir:
        if "--log-dir" not in argv:
            argv += ["--log-dir", run_dir]
        CallbackList.fire = timed_fire  # type: ignore[method-assign]
        cli.main(["train", "--no-progress", *argv])
    epochs = len(timings[("TensorBoardLogger", "on_epoch_end")]) or 1
    epoch = (marks["last_epoch_end"] - marks["first_epoch_start"]) / epochs
    per_epoch: dict[str, float] = defaultdict(float)
    at_start: dict[str, float] = defaultdict(float)
    for (name, event), values in timings.items():
        if event == "on_fit_start":
            at_start[name] += sum(values)
        else:
            per_epoch[name] += sum(values) / epochs
    bare = epoch - sum(per_epoch.values())
    print(f"\n{epochs} epochs: {epoch:.2f} s per epoch, {bare:.2f} s of it outside callbacks (the base of the %)")
    header = f"{'callback':20s} {'fit start s':>11s} {'per epoch s':>11s} {'% of epoch':>10s}"
    print(f"{header}   ms per call x calls, per event")
    for name in sorted(per_epoch, key=lambda n: -per_epoch[n]):
        events = ", ".join(
            f"{event.removeprefix('on_')} {1000 * sum(v) / len(v):.1f}x{len(v)}"
            for (cb, event), v in sorted(timings.items())
            if cb == name and sum(v) > 1e-3
        )
        share = 100 * per_epoch[name] / bare
        print(f"{name:20s} {at_start[name]:11.2f} {per_epoch[name]:11.3f} {share:9.1f}%   {events}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
