"""EMA and the LR range test in two gloo processes: exact resume with EMA, same LRs and averaged losses."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
from helpers.checkpoints import assert_identical
from helpers.paths import WORKERS
from helpers.processes import run_distributed


@pytest.mark.slow
def test_ema_resume_and_lr_test_in_two_processes(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    run_distributed(WORKERS / "ema_lr_worker.py", "--dir", str(tmp_path / "ckpt"), "--out", str(out))

    # EMA: a run stopped at step 5 (mid-epoch, between two EMA updates) and resumed ends bit-identical.
    reference = safetensors.torch.load_file(str(out / "weights-reference.safetensors"))
    resumed = safetensors.torch.load_file(str(out / "weights-resumed.safetensors"))
    assert any(k.startswith("ema.") for k in reference)
    assert_identical(resumed, reference)
    metrics = json.loads((out / "metrics.json").read_text())
    ema_tags = {k: v for k, v in metrics["reference"].items() if k.startswith("val_ema/")}
    assert ema_tags and all(metrics["resumed"][k] == v for k, v in ema_tags.items())

    # LR test: every process swept the same LRs and saw the same loss, the mean of the processes' own.
    ranks = [json.loads((out / f"lr-rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["processes"] == 2
    assert ranks[0]["lrs"] == ranks[1]["lrs"] and ranks[0]["losses"] == ranks[1]["losses"]
    assert ranks[0]["suggestion"] == ranks[1]["suggestion"] is not None
    steps = len(ranks[0]["losses"])
    assert steps >= 5 and all(r["restored"] for r in ranks)
    local0, local1 = ranks[0]["local"][:steps], ranks[1]["local"][:steps]
    assert local0 != local1  # each process has its own batches
    for mean, a, b in zip(ranks[0]["losses"], local0, local1, strict=True):
        assert mean == pytest.approx((a + b) / 2, rel=1e-6)
