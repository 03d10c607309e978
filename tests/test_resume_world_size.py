"""Resuming with another number of processes or batch size trains every sample of the epoch exactly once.

One torchrun launch (`workers/sample_order_worker.py`) trains 2 x 16 and 2 x 24 samples per
step; the single-process runs (1 x 32, 1 x 48) run here. The dataset's inputs carry each
sample's id, so every epoch is checked against the seedable sampler's order, computed here
with torch alone: each sample once, in the saved shuffle order, with the LR of its optimizer step.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.checkpoints import assert_identical
from helpers.paths import WORKERS
from helpers.processes import run_distributed
from helpers.sample_ids import EVERY, GAMMA, LR, SAMPLES, read_rows, run

from callbacks_kit.checkpoint.remaining import split_remaining


def merged(paths: list[Path]) -> list[dict[str, Any]]:
    """The rows of several processes as one per optimizer step: the ids of process 0, then of process 1."""
    per_rank = [read_rows(path) for path in paths]
    steps = []
    for rows in zip(*per_rank, strict=True):
        assert len({(r["epoch"], r["step"], r["lr"]) for r in rows}) == 1, rows  # every process at the same step
        steps.append({**rows[0], "ids": [i for r in rows for i in r["ids"]]})
    return steps


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """1 x 32 stopped after step 1, here; then the two-process worker (2 x 16 stopped after step 5, 2 x 24 resumed)."""
    base = tmp_path_factory.mktemp("world-size")
    _, single = run(32, base / "single", stop_at=1, copy_to=base / "copies", copy_at=(1,))
    out = base / "out"
    worker = run_distributed(
        WORKERS / "sample_order_worker.py", "--out", str(out), "--from-single", str(base / "copies" / "step1")
    )
    return {
        "base": base,
        "out": out,
        "single": single,
        "a": merged([out / "a-rank0.jsonl", out / "a-rank1.jsonl"]),
        "c": merged([out / "c-rank0.jsonl", out / "c-rank1.jsonl"]),
        "worker": worker.stdout,
    }


def order(checkpoint: Path, epoch: int) -> list[int]:
    """The seedable sampler's order of `epoch`, as torch computes it from the seed the checkpoint holds."""
    seed = json.loads((checkpoint / "rng-rank0.json").read_text())["sampler_seed"]
    return torch.randperm(SAMPLES, generator=torch.Generator().manual_seed(seed + epoch)).tolist()


def check_epochs(before: list[dict[str, Any]], after: list[dict[str, Any]], checkpoint: Path, stop: int) -> str:
    """Every epoch: each sample once, in the saved order; the LR by optimizer step; a summary line."""
    rows = [r for r in before if r["step"] <= stop] + after
    assert [r["step"] for r in rows] == list(range(1, len(rows) + 1))  # the steps go on where they stopped
    summary = []
    for epoch in range(3):
        ids = [i for r in rows if r["epoch"] == epoch for i in r["ids"]]
        skipped, repeated = SAMPLES - len(set(ids)), len(ids) - len(set(ids))
        summary.append(f"epoch {epoch + 1}: {skipped} skipped, {repeated} repeated")
        assert (skipped, repeated) == (0, 0), summary[-1]
        assert ids == order(checkpoint, epoch)  # the same shuffle order, dealt out in order
    for r in rows:  # StepLR by optimizer steps: the step's LR is set by the steps before it
        assert r["lr"] == pytest.approx(LR * GAMMA ** ((r["step"] - 1) // EVERY)), r
    return "; ".join(summary)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, saved_by, stop, size",
    [
        ("2x16 -> 1x32", "a", 4, 32),
        ("2x16 -> 1x48", "a", 5, 48),
        ("2x24 -> 1x32", "c", 6, 32),
        ("2x24 -> 1x32, inside an epoch resumed from 1x32", "c", 2, 32),
    ],
)
def test_two_processes_resumed_in_one(launched, tmp_path, capsys, name, saved_by, stop, size):
    checkpoint = launched["out"] / "copies" / f"step{stop}"
    _, after = run(size, tmp_path / "resumed", resume=str(checkpoint))
    out = capsys.readouterr().out
    before = launched["single"][:1] + launched["c"] if saved_by == "c" else launched["a"]
    print(f"{name}, stopped after step {stop}: {check_epochs(before, after, checkpoint, stop)}")
    assert "converted by samples" in out and "each trained once" in out, out
    assert f"The LR schedule goes on by optimizer steps from step {stop}" in out, out


@pytest.mark.slow
def test_one_process_resumed_in_two(launched):
    checkpoint = launched["base"] / "copies" / "step1"
    print(f"1x32 -> 2x24, stopped after step 1: {check_epochs(launched['single'], launched['c'], checkpoint, 1)}")
    assert "the 64 samples of epoch 1's shuffle order not trained yet (32 of 96 were)" in launched["worker"]
    assert "this run has 2, 48 and 2" in launched["worker"]


@pytest.mark.slow
def test_timed_checkpoints_are_agreed_at_log_steps(launched):
    # Process 1's clock jumped after step 1; step 2 is the first log step: both saved there, then at the end.
    for rank in (0, 1):
        assert json.loads((launched["out"] / f"timed-rank{rank}.json").read_text()) == [2, 3]


def test_a_checkpoint_without_the_sample_record_resumes_sample_exact_too(tmp_path):
    """Checkpoints written before the record (0.1.0) hold no `epoch_samples`: it is derived from the batch."""
    _, before = run(32, tmp_path / "a", stop_at=2, copy_to=tmp_path / "copies", copy_at=(2,))
    checkpoint = tmp_path / "copies" / "step2"
    doc = json.loads((checkpoint / "state.json").read_text())
    assert doc.pop("epoch_samples") == {"done": 64, "end": 96, "dataset": 96}
    data = json.dumps(doc).encode()
    (checkpoint / "state.json").write_bytes(data)
    meta = json.loads((checkpoint / "meta.json").read_text())
    meta["files"]["state.json"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}  # as 0.1.0 wrote
    meta["version"] = 1
    (checkpoint / "meta.json").write_text(json.dumps(meta))
    _, after = run(48, tmp_path / "b", resume=str(checkpoint))
    check_epochs(before, after, checkpoint, 2)


def test_the_same_layout_resumes_bit_for_bit_inside_an_epoch_resumed_in_another(tmp_path):
    """1 x 32 -> 1 x 48 (sample-exact), stopped inside that epoch, resumed again as 1 x 48: as if never stopped."""
    run(32, tmp_path / "a", stop_at=1, copy_to=tmp_path / "copies", copy_at=(1,))
    whole, _ = run(
        48, tmp_path / "b", resume=str(tmp_path / "copies" / "step1"), copy_to=tmp_path / "copies", copy_at=(2,)
    )
    again, _ = run(48, tmp_path / "c", resume=str(tmp_path / "copies" / "step2"))
    assert_identical(whole.unwrapped_model.state_dict(), again.unwrapped_model.state_dict())


@pytest.mark.parametrize(
    "samples, processes, batch, min_share, rounds, left_out",
    [
        (96, 2, 16, 1, [32, 32, 32], 0),
        (64, 2, 24, 1, [48, 16], 0),
        (50, 2, 24, 2, [48 + 2], 0),  # a tail of 1 per process is too small with BatchNorm: added to the step before
        (3, 2, 24, 2, [], 3),  # too few for two processes at all
        (7, 3, 4, 1, [7], 0),
    ],
)
def test_split_remaining_deals_every_sample_out_once(samples, processes, batch, min_share, rounds, left_out):
    indices = list(range(100, 100 + samples))
    parts = [split_remaining(indices, processes, rank, batch, min_share) for rank in range(processes)]
    assert all(p.round_samples == rounds and p.left_out == left_out for p in parts)
    for step, size in enumerate(rounds):
        batches = [p.batches[step] for p in parts]
        assert max(map(len, batches)) - min(map(len, batches)) <= 1 and min(map(len, batches)) >= min_share
        assert sum(map(len, batches)) == size
    dealt = [i for step in range(len(rounds)) for p in parts for i in p.batches[step]]
    assert dealt == indices[: len(dealt)] and len(dealt) == samples - left_out
