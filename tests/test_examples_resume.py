"""Smoke test of examples/resume_after_interruption.py (a real SIGTERM, then an exact resume)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO


@pytest.mark.slow
def test_resume_example_runs_and_is_bit_identical(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(REPO / "examples" / "resume_after_interruption.py"), "--fast", "--dir", str(tmp_path)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "interrupted by SIGTERM" in result.stdout
    assert "final weights bit-identical to the uninterrupted run: True" in result.stdout
    assert (tmp_path / "run" / "best.safetensors").exists()
