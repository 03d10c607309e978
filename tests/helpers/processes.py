"""Running code under test in fresh processes: an example, or a script in real gloo processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from helpers.paths import EXAMPLES, REPO, WORKER_PYTHONPATH


def run_example(
    name: str, *args: str, timeout: float = 300, cwd: Path | None = None, env: dict[str, str] | None = None
) -> str:
    """Run `examples/<name>` with `args` in a fresh Python process; its stdout, or fail with its output.

    PYTHONPATH points at this checkout, so the example imports the code under test from any `cwd`.
    """
    full_env = {**os.environ, "PYTHONPATH": str(REPO)}
    full_env.update(env or {})
    cmd = [sys.executable, str(EXAMPLES / name), *args]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd or REPO, env=full_env)
    assert result.returncode == 0, (
        f"{name} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result.stdout


def run_distributed(
    script: str | Path,
    *args: str,
    nproc: int = 2,
    timeout: float = 240,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `script` in `nproc` real gloo processes on the CPU through torchrun.

    `accelerate launch --cpu --num_processes 2` starts one process on a CPU host, so the
    tests use torchrun with ACCELERATE_USE_CPU, which Accelerate reads (see docs/design.md).
    The script imports callbacks_kit from this checkout, and `helpers.*`.
    """
    full_env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "PYTHONPATH": WORKER_PYTHONPATH}
    full_env.update(env or {})
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(nproc),
        str(script),
        *args,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd or REPO, env=full_env)
    if result.returncode != 0:
        raise AssertionError(f"{cmd} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return result
