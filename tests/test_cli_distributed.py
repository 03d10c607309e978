"""The command line in two real gloo processes, through the launchers users run: torchrun and accelerate launch.

Each launch must give one writer (one event file, one run.json, the run folder's lock taken
and released by the main process alone), a committed checkpoint saved by both processes,
and a `--resume last` that continues in two processes.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.paths import EXAMPLES, REPO

from callbacks_kit.checkpoint.restore import read_checkpoint, resolve_checkpoint

TINY = ("--train-samples", "64", "--val-samples", "32", "--image-size", "32", "--batch-size", "16", "--no-progress")
# No fixed-length LR schedule, so the resumed launch may train one more epoch than the first.
TRAIN = (*TINY, "--no-inspection", "--scheduler", "none")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launcher(name: str) -> list[str]:
    """The launcher's console script next to this Python (the venv's), as a user types it."""
    script = Path(sys.executable).with_name(name)
    assert script.exists(), f"{script} is missing: the install did not provide the {name} launcher"
    if name == "torchrun":
        return [str(script), "--standalone", "--nproc_per_node", "2"]
    config = EXAMPLES / "accelerate_config.yaml"
    return [str(script), "launch", "--config_file", str(config), "--main_process_port", str(_free_port())]


def launch(launcher: str, *args: str, expect: int = 0) -> str:
    """`<launcher> -m callbacks_kit ARGS` in two processes on the CPU; its output (stdout and stderr)."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [*_launcher(launcher), "-m", "callbacks_kit", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    output = result.stdout + result.stderr
    assert result.returncode == expect, f"{command} exited {result.returncode}:\n{output[-6000:]}"
    return output


def _assert_one_writer(run: Path, output: str, event_files: int) -> None:
    assert "2 process(es)" in output, output[-3000:]
    assert "in use by" not in output and "error:" not in output, output[-3000:]
    assert len(list(run.glob("events.out.tfevents.*"))) == event_files  # one per launch, from the main process
    assert not (run / ".lock").exists()  # the main process took the run's lock and released it
    assert json.loads((run / "run.json").read_text())["classes"]


@pytest.mark.slow
@pytest.mark.parametrize("first, second", [("torchrun", "accelerate"), ("accelerate", "torchrun")])
def test_train_then_resume_in_two_processes(tmp_path, first, second):
    run = tmp_path / "run"
    output = launch(first, "train", *TRAIN, "--epochs", "1", "--log-dir", str(run))
    _assert_one_writer(run, output, event_files=1)
    checkpoint = read_checkpoint(resolve_checkpoint("last", run / "checkpoints"))  # committed: every byte checked
    assert checkpoint.meta["world_size"] == 2 and checkpoint.meta["global_step"] == 2  # 64 samples / (2 x 16)
    assert (checkpoint.path / "rng-rank1.json").is_file()  # the second process saved its RNG state too

    output = launch(second, "train", *TRAIN, "--epochs", "2", "--log-dir", str(run), "--resume", "last")
    _assert_one_writer(run, output, event_files=2)
    assert "resume: from" in output and "epoch 2/2" in output, output[-3000:]
    assert read_checkpoint(resolve_checkpoint("last", run / "checkpoints")).meta["global_step"] == 4


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_lr_find_in_two_processes(tmp_path, launcher):
    run = tmp_path / "lr"
    output = launch(launcher, "lr-find", *TINY, "--lr-find-steps", "8", "--log-dir", str(run))
    assert "2 process(es)" in output, output[-3000:]
    assert output.count("suggested LR") == 1, output[-3000:]  # printed by the main process alone
    assert len(list(run.glob("events.out.tfevents.*"))) == 1
    assert not (run / ".lock").exists()
