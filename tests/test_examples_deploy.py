"""Smoke test: the after-training example trains, predicts, evaluates and exports."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.processes import run_example


@pytest.mark.slow
def test_predict_and_export(tmp_path: Path):
    out = run_example("predict_and_export.py", "--fast", "--out", str(tmp_path), "--formats", "state_dict")
    assert "predict: " in out and "test/accuracy" in out
    assert "export state_dict:" in out
    assert "state_dict loads into torchvision.models.get_model('resnet18', num_classes=6)" in out
    assert (tmp_path / "export" / "model.state_dict").is_file() and (tmp_path / "run" / "run.json").is_file()
