"""Shared pieces of the checkpoint and resume tests: a model with dropout, a scheduler, stops, worker runs."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import safetensors.torch
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from callbacks_kit import Callback, Trainer
from helpers.paths import REPO, WORKER_PYTHONPATH, WORKERS


def data(n: int = 64, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    w = torch.randn(8, 3, generator=g)
    return TensorDataset(x, (x @ w).argmax(1))


def dropout_mlp(width: int = 32) -> nn.Module:
    return nn.Sequential(nn.Linear(8, width), nn.ReLU(), nn.Dropout(0.3), nn.Linear(width, 3))


class StepLRCallback(Callback):
    """A torch StepLR stepped at every optimizer step; its state goes into checkpoints."""

    order = 0

    def __init__(self, step_size: int = 5, gamma: float = 0.7) -> None:
        self.step_size, self.gamma = step_size, gamma
        self.scheduler: torch.optim.lr_scheduler.StepLR | None = None
        self._pending: dict | None = None

    def _ensure(self, trainer: Trainer) -> torch.optim.lr_scheduler.StepLR:
        if self.scheduler is None:
            self.scheduler = torch.optim.lr_scheduler.StepLR(trainer.optimizer, self.step_size, self.gamma)
            if self._pending is not None:
                self.scheduler.load_state_dict(self._pending)
        return self.scheduler

    def on_fit_start(self, trainer: Trainer) -> None:
        self._ensure(trainer)

    def on_train_batch_end(self, trainer: Trainer) -> None:
        if trainer.state.optimizer_stepped:
            self._ensure(trainer).step()

    def state_dict(self) -> dict:
        return self.scheduler.state_dict() if self.scheduler is not None else dict(self._pending or {})

    def load_state_dict(self, state: dict) -> None:
        self._pending = dict(state)
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state)


class ScriptedScore(Callback):
    """Sets `val/score` from a list, one value per epoch, at every validation."""

    order = 100  # before EarlyStopping (150) and ModelCheckpoint (200)

    def __init__(self, values: list[float]) -> None:
        self.values = list(values)

    def on_validation_end(self, trainer: Trainer) -> None:
        trainer.state.metrics["val/score"] = self.values[trainer.state.epoch]


class StopAtStep(Callback):
    """Requests a stop after optimizer step `step` (an interruption at a known point)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: Trainer) -> None:
        if trainer.state.optimizer_stepped and trainer.state.global_step == self.step:
            trainer.state.should_stop = True


class Heartbeat(Callback):
    """Prints `step N` after every optimizer step (main process) and sleeps, to be signalled."""

    def __init__(self, sleep: float = 0.0) -> None:
        self.sleep = sleep

    def on_fit_start(self, trainer: Trainer) -> None:
        if trainer.is_main_process:
            print("ready", flush=True)

    def on_train_batch_end(self, trainer: Trainer) -> None:
        if trainer.is_main_process and trainer.state.optimizer_stepped:
            print(f"step {trainer.state.global_step}", flush=True)
        if self.sleep:
            time.sleep(self.sleep)


def make_trainer(callbacks: list[Callback], seed: int = 0, accumulation: int = 1, width: int = 32) -> Trainer:
    torch.manual_seed(seed)
    model = dropout_mlp(width)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05)
    return Trainer(
        model,
        optimizer,
        nn.CrossEntropyLoss(),
        metrics={"accuracy": lambda out, y: (out.argmax(1) == y).float().mean()},
        callbacks=callbacks,
        seed=seed,
        gradient_accumulation_steps=accumulation,
        progress_bar=False,
    )


def loaders(batch_size: int = 8) -> tuple[DataLoader, DataLoader]:
    return DataLoader(data(64), batch_size=batch_size, shuffle=True), DataLoader(data(24, seed=1), batch_size=8)


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in trainer.unwrapped_model.state_dict().items()}


def save_weights(trainer: Trainer, path: str | Path) -> None:
    safetensors.torch.save_file(weights(trainer), str(path))


def assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs: max {float((a[key] - b[key]).abs().max())}"


# ---------------------------------------------------------------------------------- subprocesses
WORKER = WORKERS / "ckpt_worker.py"
_REFERENCES: dict[tuple, dict[str, torch.Tensor]] = {}


def worker_command(*args: str, nproc: int = 1) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of a worker run in `nproc` real processes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": WORKER_PYTHONPATH, "PYTHONUNBUFFERED": "1"}
    if nproc == 1:
        return [sys.executable, str(WORKER), *args], env
    env["ACCELERATE_USE_CPU"] = "true"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    return [*launcher, str(WORKER), *args], env


def start_worker(*args: str, nproc: int = 1) -> subprocess.Popen[str]:
    """Start a worker whose stdout and stderr come together on `.stdout`."""
    cmd, env = worker_command(*args, nproc=nproc)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)


def run_worker(*args: str, nproc: int = 1, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """Run a worker to the end; fail with its output when it does not exit with 0."""
    cmd, env = worker_command(*args, nproc=nproc)
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    output = f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    assert result.returncode == 0, f"{cmd} failed ({result.returncode}):\n{output}"
    return result


def reference_weights(*args: str, nproc: int = 1) -> dict[str, torch.Tensor]:
    """Final weights of an uninterrupted worker run (computed once per configuration)."""
    key = (nproc, *args)
    if key not in _REFERENCES:
        with tempfile.TemporaryDirectory(prefix="ckpt-reference-") as name:  # 12 MB a run: not left in /tmp
            folder = Path(name)
            run_worker("--dir", str(folder / "ckpt"), "--out", str(folder / "final.safetensors"), *args, nproc=nproc)
            _REFERENCES[key] = safetensors.torch.load_file(str(folder / "final.safetensors"))
    return _REFERENCES[key]


def wait_for_line(process: subprocess.Popen[str], prefix: str, seen: list[str]) -> None:
    """Read the worker's output until a line starts with `prefix`."""
    assert process.stdout is not None
    for line in process.stdout:
        seen.append(line)
        if line.startswith(prefix):
            return
    raise AssertionError(f"the worker ended before printing {prefix!r}:\n{''.join(seen)[-4000:]}")
