"""Past one machine: docs/scaling.md's localhost recipes, and the options they use.

Two nodes (torchrun, accelerate launch), an elastic restart and a folder the nodes do not
share run as real launches: each simulated node is one launcher of one gloo process on this
machine, meeting on the loopback interface. Each launch is checked for one writer and a
committed checkpoint saved by both processes; the two-node runs are resumed in a chain
(torchrun on two nodes, accelerate on two machines, torchrun on one node of two processes)
to keep the launches few.
Timed checkpoints, `--resume auto` and the save flags are checked in this process.
"""

from __future__ import annotations

import json
import math
import shutil
import types
import warnings
from pathlib import Path

import pytest
import safetensors.torch
from helpers.checkpoints import assert_identical, loaders, make_trainer
from helpers.launchers import (
    Ended,
    accelerate_two_machines,
    env,
    launch,
    torchrun_one_node,
    torchrun_two_nodes,
)
from helpers.paths import REPO

from callbacks_kit import Callback, ModelCheckpoint
from callbacks_kit.callbacks import model_checkpoint
from callbacks_kit.checkpoint.restore import read_checkpoint, resolve_checkpoint
from callbacks_kit.cli import build_parser
from callbacks_kit.cli.job_callbacks import checkpoint_callbacks
from callbacks_kit.distributed import warn_restarts_on_a_shared_store
from callbacks_kit.errors import CheckpointError, CLIError, TrainerError

# A small model and a tiny shapes set: 64 samples, 2 x 16 per step, 2 steps per epoch. No
# fixed-length schedule, so a resumed launch may train more epochs than the first.
TRAIN = ("train", "--model", "shufflenet_v2_x0_5", "--train-samples", "64", "--val-samples", "32", "--image-size",
         "32", "--batch-size", "16", "--no-progress", "--no-inspection", "--scheduler", "none", "--save-every-steps",
         "2", "--resume", "auto")  # fmt: skip


def assert_one_writer(run: Path, ended: list[Ended], event_files: int) -> dict:
    """All exited 0; one event file per launch, the lock released; the meta of the last (committed) checkpoint."""
    output = "\n".join(e.output for e in ended)
    assert all(e.returncode == 0 for e in ended), output[-6000:]
    assert "2 process(es)" in output and "error:" not in output, output[-3000:]
    assert len(list(run.glob("events.out.tfevents.*"))) == event_files  # written by the main process alone
    assert not (run / ".lock").exists() and json.loads((run / "run.json").read_text())["classes"]
    checkpoint = read_checkpoint(resolve_checkpoint("last", run / "checkpoints"))  # committed: every byte checked
    assert checkpoint.meta["world_size"] == 2 and (checkpoint.path / "rng-rank1.json").is_file()
    return checkpoint.meta


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Ended], Path]:
    """torchrun on two nodes, 3 epochs from scratch; its final checkpoint kept apart (the elastic run's reference)."""
    base = tmp_path_factory.mktemp("two-nodes")
    ended = launch(torchrun_two_nodes(), *TRAIN, "--epochs", "3", "--log-dir", str(base / "run"))
    assert all(e.returncode == 0 for e in ended), "\n".join(e.output[-4000:] for e in ended)
    last = resolve_checkpoint("last", base / "run" / "checkpoints")
    return base / "run", ended, Path(shutil.copytree(last, base / "final" / last.name))


@pytest.mark.slow
def test_two_nodes_with_torchrun_then_two_machines_with_accelerate_then_one_node(two_nodes):
    """Each launch goes on from the one before: one writer and a committed checkpoint of both processes each time."""
    run, ended, _ = two_nodes
    assert assert_one_writer(run, ended, event_files=1)["global_step"] == 6
    assert all("starting from scratch" in e.output for e in ended)  # --resume auto, nothing saved yet
    ended = launch(accelerate_two_machines(), *TRAIN, "--epochs", "4", "--log-dir", str(run))
    assert assert_one_writer(run, ended, event_files=2)["global_step"] == 8
    assert all("resume: from" in e.output for e in ended)  # trainer.print: once per node
    assert sum(e.output.count("epoch 4/4") for e in ended) == 1  # the progress summary: the main process
    [one_node] = launch([torchrun_one_node()], *TRAIN, "--epochs", "5", "--log-dir", str(run))
    assert "resume: from" in one_node.output and "epoch 5/5" in one_node.output, one_node.output[-3000:]
    assert assert_one_writer(run, [one_node], event_files=3)["global_step"] == 10


# Loaded by Python at start-up from PYTHONPATH: process 1 of the first attempt SIGKILLs itself
# right after writing its file of its second save. The first save is committed by then:
# with several processes a save is committed when the next one starts.
KILL_ONCE = """
import os
import signal

if os.environ.get("RANK") == "1" and os.environ.get("TORCHELASTIC_RESTART_COUNT") == "0":
    _fsync, _saves = os.fsync, []

    def _fsync_then_die(fd):
        _fsync(fd)
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")) == "rng-rank1.json":
            _saves.append(fd)
            if len(_saves) == 2:
                os.kill(os.getpid(), signal.SIGKILL)

    os.fsync = _fsync_then_die
"""


@pytest.mark.slow
def test_elastic_restart_after_a_sigkill_ends_bit_for_bit_as_an_uninterrupted_run(two_nodes, tmp_path):
    _, _, reference = two_nodes
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(KILL_ONCE)
    run = tmp_path / "run"
    [ended] = launch([torchrun_one_node(max_restarts=1)], *TRAIN, "--epochs", "3", "--log-dir", str(run),
                     environ=env(f"{tmp_path / 'site'}:{REPO}"))  # fmt: skip
    output = ended.output
    assert ended.returncode == 0, output[-6000:]
    assert "exitcode: -9" in output and "local_rank: 1" in output, output[-3000:]  # SIGKILLed, then restarted
    assert "resume auto: no checkpoint yet" in output and "resume: from" in output, output[-3000:]
    final = resolve_checkpoint("last", run / "checkpoints")
    assert final.name == reference.name
    for name in ("model.safetensors", "state.safetensors"):  # the weights, and the optimizer's moments
        assert_identical(safetensors.torch.load_file(final / name), safetensors.torch.load_file(reference / name))


@pytest.mark.slow
def test_a_checkpoint_folder_the_nodes_do_not_share_fails_every_process_before_training(tmp_path):
    folders = [tmp_path / "node0", tmp_path / "node1"]  # a per-node folder: what nodes without a shared filesystem see
    ended = launch(torchrun_two_nodes(), *TRAIN, "--epochs", "1", "--log-dir", str(tmp_path / "run"),
                   per_node=[("--checkpoint-dir", str(folder)) for folder in folders], timeout=120)  # fmt: skip
    for node in ended:
        print(f"a node's launcher exited {node.returncode} after {node.seconds:.1f} s")
        assert node.returncode != 0, node.output[-3000:]
        assert "is not shared by all processes" in node.output and "shared filesystem" in node.output, node.output[
            -3000:
        ]
        assert any(str(folder) in node.output for folder in folders)
        assert "epoch 1/1" not in node.output  # nothing was trained
    assert not [path for folder in folders if folder.exists() for path in folder.iterdir()]


# ------------------------------------------------------------------------------ in one process
class SavedSteps(Callback):
    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_save_checkpoint(self, trainer) -> None:  # noqa: ANN001
        self.steps.append(trainer.state.global_step)


def test_every_n_minutes_saves_at_the_first_step_after_the_time_is_up(tmp_path, monkeypatch):
    now = [0.0]
    monkeypatch.setattr(model_checkpoint, "time", types.SimpleNamespace(monotonic=lambda: now[0]))

    class Clock(Callback):
        order = 100  # before ModelCheckpoint

        def on_train_batch_end(self, trainer) -> None:  # noqa: ANN001
            now[0] += 25  # seconds per optimizer step

    saved = SavedSteps()
    checkpoint = ModelCheckpoint(tmp_path, every_n_epochs=None, every_n_minutes=1)
    make_trainer([Clock(), checkpoint, saved]).fit(*loaders(), epochs=2)  # 8 steps per epoch
    # One process looks at the clock after every step: 75 s after the start (step 3), then 75 s after that save.
    assert saved.steps == [3, 6, 9, 12, 15, 16]  # and at the end of the last epoch
    assert ModelCheckpoint(tmp_path / "a", every_n_minutes=30).state_key == ModelCheckpoint(tmp_path / "b").state_key


@pytest.mark.parametrize("bad", [0, -1, math.nan, math.inf, True, "5"])
def test_every_n_minutes_refuses_what_is_not_a_positive_number(tmp_path, bad):
    with pytest.raises(TrainerError, match="every_n_minutes must be None or a number > 0"):
        ModelCheckpoint(tmp_path, every_n_minutes=bad)


def test_resume_auto_starts_fresh_then_resumes_and_says_which(tmp_path, capsys):
    make_trainer([ModelCheckpoint(tmp_path)]).fit(*loaders(), epochs=1, resume_from="auto")
    assert f"resume auto: no checkpoint yet in {tmp_path}; starting from scratch" in capsys.readouterr().out
    trainer = make_trainer([ModelCheckpoint(tmp_path)])
    trainer.fit(*loaders(), epochs=2, resume_from="auto")
    assert f"resume: from {tmp_path / 'epoch=0001-step=00000008'} at epoch 2" in capsys.readouterr().out
    assert trainer.state.global_step == 16
    with pytest.raises(CheckpointError, match="resume_from='auto' looks in the ModelCheckpoint's folder"):
        make_trainer([]).fit(*loaders(), epochs=1, resume_from="auto")


def test_the_save_and_resume_flags_build_the_checkpoint_and_refuse_bad_values(tmp_path):
    def callbacks(*argv: str) -> list:
        return checkpoint_callbacks(build_parser().parse_args(["train", *argv]), str(tmp_path))

    flags = ("--log-dir", str(tmp_path), "--resume", "auto", "--save-every-steps", "50", "--save-every-minutes", "30")
    checkpoint = next(c for c in callbacks(*flags) if isinstance(c, ModelCheckpoint))
    assert (checkpoint.every_n_steps, checkpoint.every_n_minutes) == (50, 30.0)
    for argv, message in [
        (("--save-every-steps", "0"), "--save-every-steps must be at least 1 optimizer step, got 0"),
        (("--save-every-minutes", "0"), "--save-every-minutes must be a number of minutes above 0"),
        (("--save-every-minutes", "nan"), "--save-every-minutes must be a number of minutes above 0"),
        (("--resume", "auto"), "--resume auto continues the run of --log-dir"),
    ]:
        with pytest.raises(CLIError, match=message):
            callbacks(*argv)


def test_torchrun_restarts_on_a_shared_store_are_warned_about(monkeypatch):
    elastic = {"RANK": "0", "TORCHELASTIC_USE_AGENT_STORE": "True", "TORCHELASTIC_MAX_RESTARTS": "3"}
    for name, value in elastic.items():
        monkeypatch.setenv(name, value)
    with pytest.warns(RuntimeWarning, match="TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1"):
        warn_restarts_on_a_shared_store()
    for name, value in (("TORCHELASTIC_USE_AGENT_STORE", "False"), ("TORCHELASTIC_MAX_RESTARTS", "0"), ("RANK", "1")):
        monkeypatch.setenv(name, value)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            warn_restarts_on_a_shared_store()
        monkeypatch.setenv(name, elastic[name])
