"""scripts/benchmark.py runs, prints its tables and writes its JSON (timings are not checked)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.end_to_end import end_to_end_argv
from benchmarks.suite import build_parser
from callbacks_kit.cli import build_parser as cli_parser

REPO = Path(__file__).resolve().parents[1]


def run_benchmark(tmp_path: Path, *args: str) -> tuple[str, dict]:
    out = tmp_path / "results.json"
    cmd = [sys.executable, str(REPO / "scripts" / "benchmark.py"), "--quick", "--repeats", "1", "--json", str(out)]
    result = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    # --quick enforces only the sync budget, which does not depend on timing.
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout, json.loads(out.read_text())


def test_loop_and_syncs_sections(tmp_path: Path):
    stdout, results = run_benchmark(
        tmp_path, "--no-peers", "--skip", "callbacks", "histograms", "checkpoints", "end-to-end", "segmentation-views"
    )
    assert "1. Loop overhead: tiny MLP" in stdout and "1. Loop overhead: small CNN" in stdout
    assert "callbacks_kit Trainer" in stdout and "hand-written loop (control)" in stdout
    assert "5. Host-device syncs" in stdout and "Budgets" in stdout and "all budgets pass" in stdout
    assert [case["case"] for case in results["loop"]["cases"]] == ["tiny MLP", "small CNN"]
    rows = results["loop"]["cases"][0]["rows"]
    assert {r["runner"] for r in rows} == {
        "hand-written Accelerate loop",
        "hand-written loop (control)",
        "hand-written loop, the Trainer's optimizer calls",
        "callbacks_kit Trainer",
    }
    assert all(r["median_s_per_step"] > 0 for r in rows)
    assert "The Trainer's own bookkeeping" in stdout and results["loop"]["cases"][0]["bookkeeping_ratio"] > 0
    assert results["syncs"]["rows"][0]["max_syncs_non_logging"] == 0
    assert {b["budget"] for b in results["budgets"]} >= {
        "Trainer / hand loop, tiny MLP",
        "Trainer / hand loop, small CNN",
    }
    assert results["quick"] is True and results["machine"]["torch"]
    # Section 10: every start-up command ran as it should (help, an argument error) and was timed.
    assert "10. Start-up" in stdout
    startup = {row["command"]: row for row in results["startup"]["rows"]}
    assert set(startup) == {
        'python -c "import torch"',
        "callbacks-kit --help",
        "callbacks-kit train --help",
        "callbacks-kit train --epochs x (argument error)",
    }
    assert all(row["median_s"] > 0 for row in startup.values())
    assert "CLI help and argument errors / import torch" in {b["budget"] for b in results["budgets"]}
    # Section 11: the Trainer's steps with a Profiler outside its window, beside the Trainer's alone.
    assert "11. Profiler outside its window" in stdout
    assert [r["runner"] for r in results["profiler"]["rows"]] == [
        "Trainer (default callbacks)",
        "Trainer + Profiler, before its window",
        "Trainer + Profiler, after its window",
    ]
    assert all(r["median_s_per_step"] > 0 for r in results["profiler"]["rows"])


@pytest.mark.slow
def test_every_section(tmp_path: Path):
    stdout, results = run_benchmark(tmp_path, "--throughput")
    for title in ("1. Loop overhead", "2. Callbacks of the main job", "3. Input", "4. Histograms", "5. Host-device",
                  "6. Throughput", "7. Checkpoint stall", "8. End to end", "9. Weight EMA", "10. Start-up",
                  "11. Profiler", "Budgets"):  # fmt: skip
        assert title in stdout
    assert {"loop", "callbacks", "input", "histograms", "syncs", "throughput", "ema", "budgets"} <= set(results)
    assert [r["mode"] for r in results["checkpoints"]["rows"]] == ["no save", "synchronous save", "asynchronous save"]
    assert results["checkpoints"]["rows"][1]["save_call_s"] > 0 and results["end_to_end"]["bare_s"] > 0
    assert "ModelCheckpoint" in {r["callback"] for r in results["end_to_end"]["callbacks"]}
    assert results["end_to_end"]["cpu_bare_s"] > 0 and results["end_to_end"]["threads"] >= 1
    assert 0 < results["ema"]["median_update_s"] and "EMA update / ResNet-18 step" in {
        b["budget"] for b in results["budgets"]
    }
    assert "TensorBoardLogger" in results["callbacks"]["inspection_found"]
    assert any(b["budget"].endswith("share of an epoch") for b in results["budgets"])
    assert "2d. Segmentation views" in stdout and "SegmentationOverlays, share of an epoch" in {
        b["budget"] for b in results["budgets"]
    }


def test_end_to_end_runs_the_main_job_as_the_readme_does():
    """Section 8 measures `callbacks-kit train` with its own defaults: 5 epochs, 3000 images."""
    argv = end_to_end_argv(build_parser().parse_args([]))
    defaults = cli_parser().parse_args(["train"])
    assert argv == ["train", "--epochs", str(defaults.epochs)] and defaults.epochs == 5
    shorter = end_to_end_argv(build_parser().parse_args(["--e2e-epochs", "2", "--e2e-samples", "500"]))
    assert shorter == ["train", "--epochs", "2", "--train-samples", "500", "--val-samples", "100"]
    assert end_to_end_argv(build_parser().parse_args(["--quick"]))[:3] == ["train", "--epochs", "1"]
