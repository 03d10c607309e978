"""Smoke test of examples/resume_after_interruption.py (a real SIGTERM, then an exact resume)."""

from __future__ import annotations

import pytest
from helpers.processes import run_example


@pytest.mark.slow
def test_resume_example_runs_and_is_bit_identical(tmp_path):
    out = run_example(
        "resume_after_interruption.py", "--fast", "--dir", str(tmp_path), cwd=tmp_path, env={"OMP_NUM_THREADS": "1"}
    )
    assert "interrupted by SIGTERM" in out
    assert "final weights bit-identical to the uninterrupted run: True" in out
    assert (tmp_path / "run" / "best.safetensors").exists()
