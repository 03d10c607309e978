"""Exact resume in two gloo processes after a real SIGKILL, and a resume on another world size."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import safetensors.torch
from helpers.checkpoints import assert_identical, reference_weights, run_worker, worker_command


@pytest.mark.slow
def test_sigkill_mid_epoch_in_two_processes_then_resume_is_bit_identical(tmp_path):
    directory = tmp_path / "ckpt"
    args = ("--dir", str(directory), "--every-n-steps", "1", "--kill-at", "6", "--epochs", "3")
    cmd, env = worker_command(*args, nproc=2)
    killed = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert killed.returncode != 0 and "finished" not in killed.stdout  # rank 0 died by SIGKILL at step 6
    last = json.loads((directory / "last.json").read_text())["checkpoint"]
    # 4 steps per epoch on 2 processes. Saves are asynchronous: with several processes a save is
    # committed at the next one, so step 6's was written but not committed, and last.json lags by one.
    assert last == "epoch=0002-batch=0001-step=00000005"
    kept = shutil.copytree(directory / last, tmp_path / "kept" / last)  # the resumed run prunes it
    out = tmp_path / "w.safetensors"
    run_worker("--dir", str(directory), "--resume", "last", "--out", str(out), "--epochs", "3", nproc=2)
    assert_identical(safetensors.torch.load_file(str(out)), reference_weights("--epochs", "3", nproc=2))

    # The same checkpoint in one process: sound, not exact, and said so.
    single = run_worker("--dir", str(tmp_path / "single"), "--resume", str(kept), "--epochs", "3")
    assert "saved by 2 process(es) with 16 samples per step" in single.stdout
    assert "converted by samples (batch 2)" in single.stdout and "not bit-identically" in single.stdout
    assert "finished at step 19" in single.stdout  # step 5, then 6 batches of epoch 2 and 8 of epoch 3
