"""A real two-process run (gloo on the CPU through torchrun)."""

import json
from pathlib import Path

from helpers.paths import WORKERS
from helpers.processes import run_distributed


def test_two_processes_stop_together_and_only_main_writes(tmp_path: Path):
    result = run_distributed(WORKERS / "dist_trainer_worker.py", str(tmp_path))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["num_processes"] == 2 for r in ranks)
    # Rank 1 alone asked to stop at step 6; both stopped there, mid-way through epoch 2.
    assert [r["global_step"] for r in ranks] == [6, 6]
    assert [r["epoch"] for r in ranks] == [1, 1]
    # DDP kept the replicas identical.
    assert ranks[0]["first_weight"] == ranks[1]["first_weight"]
    # gather_for_metrics counted each of the 31 validation samples once.
    for r in ranks:
        assert abs(r["val_accuracy"] - r["expected_accuracy"]) < 1e-6
    # Only the main process wrote: one event file, one summary line per epoch.
    event_files = list((tmp_path / "run").glob("events.out.tfevents.*"))
    assert len(event_files) == 1
    combined = result.stdout + result.stderr
    assert combined.count("epoch 1/4  train/epoch_loss") == 1
    # Each process profiled steps 3 and 4 into the main process's run folder.
    traces = sorted(p.name for p in (tmp_path / "run" / "profile").iterdir())
    assert traces == ["steps3-4.rank0.pt.trace.json.gz", "steps3-4.rank1.pt.trace.json.gz"]
