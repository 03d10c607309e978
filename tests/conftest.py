"""Shared test helpers: tiny models and data, running an example, and a real two-process launcher."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


def tiny_classification_data(n: int = 64, features: int = 8, classes: int = 3, seed: int = 0) -> TensorDataset:
    """A linearly separable dataset that a small MLP learns in a few steps."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    w = torch.randn(features, classes, generator=g)
    return TensorDataset(x, (x @ w).argmax(1))


def tiny_mlp(features: int = 8, classes: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(features, 16), nn.ReLU(), nn.Linear(16, classes))


@pytest.fixture
def tiny_loaders() -> tuple[DataLoader, DataLoader]:
    return (
        DataLoader(tiny_classification_data(64), batch_size=8, shuffle=True),
        DataLoader(tiny_classification_data(30, seed=1), batch_size=8),
    )


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
    tests use torchrun with ACCELERATE_USE_CPU, which Accelerate reads (see DESIGN.md).
    """
    full_env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
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
