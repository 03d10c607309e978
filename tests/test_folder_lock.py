"""One writer per run folder and per checkpoint folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.checkpoints import loaders, make_trainer
from helpers.paths import REPO

from callbacks_kit import ModelCheckpoint
from callbacks_kit.cli import main
from callbacks_kit.errors import CheckpointError, FolderInUseError
from callbacks_kit.folder_lock import FolderLock

TINY = ["--epochs", "1", "--train-samples", "32", "--val-samples", "16", "--batch-size", "16", "--image-size", "32",
        "--no-progress", "--no-inspection", "--model", "resnet18"]  # fmt: skip

HOLDER = """
import sys, time
from callbacks_kit.folder_lock import FolderLock
lock = FolderLock(sys.argv[1], "the run folder", "fix")
lock.acquire()
print("locked", flush=True)
sys.stdin.readline()
lock.release()
"""


def _hold(folder: Path) -> subprocess.Popen[str]:
    """Another process that holds the lock of `folder` until its stdin closes."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_run_in_a_folder_held_by_a_live_process_is_refused(tmp_path, capsys):
    holder = _hold(tmp_path / "run")
    try:
        assert main(["train", *TINY, "--log-dir", str(tmp_path / "run")]) == 2
    finally:
        holder.communicate("\n", timeout=30)
    err = capsys.readouterr().err
    assert "is in use by process" in err and str(holder.pid) in err and "another --log-dir" in err
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing written by the refused run


def test_a_checkpoint_folder_held_by_another_process_is_refused(tmp_path):
    holder = _hold(tmp_path / "ckpt")
    try:
        with pytest.raises(FolderInUseError, match=f"process {holder.pid}"):
            make_trainer([ModelCheckpoint(tmp_path / "ckpt")]).fit(*loaders(), epochs=1)
    finally:
        holder.communicate("\n", timeout=30)
    assert not (tmp_path / "ckpt" / "last.json").exists()


def test_two_model_checkpoints_on_one_folder_are_refused(tmp_path):
    first = ModelCheckpoint(tmp_path, monitor="val/loss", mode="min")
    second = ModelCheckpoint(tmp_path, monitor="val/accuracy", mode="max")
    with pytest.raises(CheckpointError, match="another writer in this same process"):
        make_trainer([first, second]).fit(*loaders(), epochs=1)
    assert not (tmp_path / ".lock").exists()  # the first released it on the way out


def test_a_stale_lock_of_a_dead_process_is_reported_and_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    owner = {"pid": pid, "host": "h", "started": "then", "command": "callbacks-kit train", "token": "old"}
    (tmp_path / ".lock").write_text(json.dumps(owner))
    with pytest.warns(UserWarning, match=f"stale lock of process {pid}"):
        make_trainer([ModelCheckpoint(tmp_path)]).fit(*loaders(), epochs=1)
    assert (tmp_path / "last.json").exists() and not (tmp_path / ".lock").exists()


def test_a_normal_end_leaves_no_lock_file(tmp_path):
    assert main(["train", *TINY, "--log-dir", str(tmp_path / "run")]) == 0
    assert not list((tmp_path / "run").rglob(".lock"))
    # and the folder can be used again at once, e.g. to resume
    assert main(["train", *TINY, "--log-dir", str(tmp_path / "run"), "--resume", "last"]) == 0


def test_the_lock_is_released_and_retaken_by_one_object(tmp_path):
    lock = FolderLock(tmp_path, "the folder", "fix")
    with lock:
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
        with pytest.raises(FolderInUseError):
            FolderLock(tmp_path, "the folder", "fix").acquire()
    assert not (tmp_path / ".lock").exists()
    time.sleep(0)
    with FolderLock(tmp_path, "the folder", "fix"):
        pass


def test_a_folder_where_the_lock_file_goes_is_named_in_one_line(tmp_path, capsys):
    for lock in (tmp_path / "a" / ".lock", tmp_path / "b" / "checkpoints" / ".lock"):  # run folder, checkpoint folder
        lock.mkdir(parents=True)
        run = lock.parents[1] if lock.parent.name == "checkpoints" else lock.parent
        assert main(["train", *TINY, "--log-dir", str(run)]) == 2
        err = capsys.readouterr().err
        assert f"{lock} is a folder, where the" in err and f"rmdir {lock}" in err and err.count("\n") == 1
        assert "pick a folder you can write to" not in err
