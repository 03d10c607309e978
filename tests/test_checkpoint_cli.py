"""The main job's checkpoint options: --checkpoint-dir, --resume, --early-stop-patience."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import pytest
from helpers.checkpoints import wait_for_line
from helpers.paths import REPO

from callbacks_kit import EarlyStopping, ModelCheckpoint, PreemptionHandler, TerminateOnNaN
from callbacks_kit.cli import build_parser, main
from callbacks_kit.cli.job_callbacks import checkpoint_callbacks
from callbacks_kit.errors import CLIError

TINY = ["--train-samples", "48", "--val-samples", "16", "--batch-size", "16", "--image-size", "32", "--no-progress",
        "--no-inspection"]  # fmt: skip


def _args(*argv: str):
    return build_parser().parse_args(["train", *argv])


def test_defaults_keep_the_best_by_val_accuracy_in_the_run_folder(tmp_path):
    callbacks = checkpoint_callbacks(_args(), str(tmp_path / "run"))
    checkpoint = next(c for c in callbacks if isinstance(c, ModelCheckpoint))
    assert checkpoint.dirpath == tmp_path / "run" / "checkpoints"
    assert (checkpoint.monitor.key, checkpoint.mode, checkpoint.save_top_k, checkpoint.save_last) == (
        "val/accuracy",
        "max",
        1,
        True,
    )
    assert any(isinstance(c, TerminateOnNaN) for c in callbacks)
    assert any(isinstance(c, PreemptionHandler) for c in callbacks)
    assert not any(isinstance(c, EarlyStopping) for c in callbacks)
    assert _args().resume is None


def test_options_map_to_callbacks(tmp_path):
    args = _args("--checkpoint-dir", str(tmp_path / "c"), "--early-stop-patience", "2", "--resume", "last")
    callbacks = checkpoint_callbacks(args, str(tmp_path / "run"))
    assert next(c for c in callbacks if isinstance(c, ModelCheckpoint)).dirpath == tmp_path / "c"
    stopper = next(c for c in callbacks if isinstance(c, EarlyStopping))
    assert (stopper.monitor.key, stopper.monitor.mode, stopper.patience) == ("val/accuracy", "max", 2)
    assert args.resume == "last"


def test_bad_options_are_clear(tmp_path):
    with pytest.raises(CLIError, match="--resume last continues the run of --log-dir"):
        checkpoint_callbacks(_args("--resume", "last"), str(tmp_path))
    with pytest.raises(CLIError, match="--early-stop-patience must be at least 1"):
        checkpoint_callbacks(_args("--early-stop-patience", "0"), str(tmp_path))


def test_unwritable_checkpoint_dir_fails_before_training(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    status = main(["train", *TINY, "--epochs", "1", "--log-dir", str(tmp_path / "run"),
                   "--checkpoint-dir", str(tmp_path / "file" / "ckpt")])  # fmt: skip
    assert status == 2
    assert "is not writable (Not a directory)" in capsys.readouterr().err


@pytest.mark.slow
def test_resume_last_before_any_checkpoint_starts_fresh(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "1", "--log-dir", str(run), "--resume", "last"]) == 0
    assert "no checkpoint yet" in capsys.readouterr().out  # so a job script may always pass --resume last
    assert json.loads((run / "checkpoints" / "last.json").read_text())["checkpoint"] == "epoch=0001-step=00000003"
    assert (run / "checkpoints" / "best.safetensors").exists()


@pytest.mark.slow
def test_sigterm_to_the_main_job_then_resume_last(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", *TINY, "--epochs", "2", "--log-dir", str(run)]
    process = subprocess.Popen([sys.executable, "-m", "callbacks_kit", *argv], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, cwd=REPO)  # fmt: skip
    seen: list[str] = []
    wait_for_line(process, "epoch 1/2", seen)  # the first epoch's summary line
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    print(f"main job exit {time.monotonic() - sent:.2f} s after SIGTERM")
    assert process.returncode == 128 + signal.SIGTERM, output
    assert "stopped by SIGTERM" in output and "--resume last" in output
    step = int(re.search(r"stopped by SIGTERM .*\(optimizer step (\d+)\)", output).group(1))
    last = json.loads((run / "checkpoints" / "last.json").read_text())["checkpoint"]
    assert json.loads((run / "checkpoints" / last / "meta.json").read_text())["global_step"] == step
    assert main([*argv, "--resume", "last"]) == 0
    assert f"resume: from {run / 'checkpoints' / last}" in capsys.readouterr().out
    assert json.loads((run / "checkpoints" / "last.json").read_text())["checkpoint"] == "epoch=0002-step=00000006"
