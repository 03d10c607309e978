"""Section 10, start-up: `callbacks-kit --help`, `train --help` and an argument error against `import torch`.

Each command runs in a fresh interpreter, as a user's shell runs it, and the wall time from
start to exit is taken. The commands take turns within every repeat (their order rotating),
so a change in the machine's load hits them alike; each figure is the median of the repeats.
The CLI builds its parser without importing torch and imports a command's module only once
the command line has parsed, so none of these needs torch at all. Budget: each at most 1.5x
`python -c "import torch"`.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import Bench, print_table

STARTUP_BUDGET = 1.5  # help and argument errors / `python -c "import torch"`, medians (section 10)
REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "callbacks_kit"]
# What each command line is, what it must exit with, and a text its output must hold.
COMMANDS: dict[str, tuple[list[str], int, str]] = {
    'python -c "import torch"': ([sys.executable, "-c", "import torch"], 0, ""),
    "callbacks-kit --help": ([*CLI, "--help"], 0, "usage: callbacks-kit"),
    "callbacks-kit train --help": ([*CLI, "train", "--help"], 0, "--monitor"),
    "callbacks-kit train --epochs x (argument error)": ([*CLI, "train", "--epochs", "x"], 2, "invalid int value"),
}
BASELINE = 'python -c "import torch"'


def time_command(argv: list[str], status: int, text: str) -> float:
    """Seconds from start to exit of `argv` in a fresh interpreter, importing this checkout's package."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, env=env, timeout=300, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != status or text not in done.stdout + done.stderr:
        raise RuntimeError(f"{' '.join(argv)} exited with {done.returncode}, not {status}:\n{done.stderr[-2000:]}")
    return seconds


def measure(repeats: int) -> dict[str, list[float]]:
    """Seconds of every command per repeat, the commands taking turns in a rotating order."""
    names = list(COMMANDS)
    times: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        turn = names[repeat % len(names) :] + names[: repeat % len(names)]
        for name in turn:
            times[name].append(time_command(*COMMANDS[name]))
    return times


def run(bench: Bench) -> None:
    """Time, print, and check the budget."""
    repeats = max(1, bench.args.repeats)
    times = measure(repeats)
    medians = {name: statistics.median(seconds) for name, seconds in times.items()}
    ratios = {name: medians[name] / medians[BASELINE] for name in medians}
    bench.results["startup"] = {
        "repeats": repeats,
        "rows": [
            {"command": name, "median_s": medians[name], "ratio": ratios[name], "times_s": times[name]}
            for name in COMMANDS
        ],
    }
    print_table(
        f"10. Start-up: wall time of a fresh process, median of {repeats}, the commands taking turns",
        ["command", "median s", "min s", "max s", "/ import torch"],
        [
            [name, f"{medians[name]:.3f}", f"{min(times[name]):.3f}", f"{max(times[name]):.3f}", f"{ratios[name]:.2f}x"]
            for name in COMMANDS
        ],
    )
    worst = max(ratio for name, ratio in ratios.items() if name != BASELINE)
    bench.check("CLI help and argument errors / import torch", worst, STARTUP_BUDGET, enforced=bench.enforce)
