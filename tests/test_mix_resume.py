"""Exact resume with MixUp/CutMix (and label smoothing) in one process and in two gloo processes."""

from __future__ import annotations

import pytest
import safetensors.torch
import torch
from helpers.checkpoints import StopAtStep, assert_identical, weights
from helpers.mixing import EPOCHS, mix_loaders, mix_trainer
from helpers.paths import WORKERS
from helpers.processes import run_distributed

from callbacks_kit import ModelCheckpoint

WORKER = WORKERS / "mix_worker.py"


def test_stop_mid_epoch_with_mixing_and_resume_is_bit_identical(tmp_path):
    reference = mix_trainer([ModelCheckpoint(tmp_path / "reference")])
    reference.fit(*mix_loaders(), epochs=EPOCHS)
    first = mix_trainer([ModelCheckpoint(tmp_path / "ckpt"), StopAtStep(11)])  # mid epoch 1, where it mixes
    first.fit(*mix_loaders(), epochs=EPOCHS)
    assert first.state.global_step == 11
    torch.manual_seed(999)  # a fresh process would start from other RNG states
    resumed = mix_trainer([ModelCheckpoint(tmp_path / "ckpt")], seed=123)
    resumed.fit(*mix_loaders(), epochs=EPOCHS, resume_from="last")
    assert resumed.state.global_step == reference.state.global_step == EPOCHS * 8
    assert_identical(weights(resumed), weights(reference))
    assert resumed.state.metrics["val/loss"] == reference.state.metrics["val/loss"]


@pytest.mark.slow
def test_stop_mid_epoch_with_mixing_in_two_processes_and_resume_is_bit_identical(tmp_path):
    reference, out = tmp_path / "reference.safetensors", tmp_path / "resumed.safetensors"
    first = run_distributed(WORKER, "--phase", "first", "--dir", str(tmp_path), "--reference", str(reference))
    assert "stopped at step 5" in first.stdout  # 4 steps per epoch on 2 processes: mid epoch 1
    resumed = run_distributed(WORKER, "--phase", "resume", "--dir", str(tmp_path), "--out", str(out))
    assert "finished at step 12" in resumed.stdout
    assert_identical(safetensors.torch.load_file(str(out)), safetensors.torch.load_file(str(reference)))
