"""Preemption: a real signal gives a saved checkpoint, a clean exit, and an exact resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import safetensors.torch
from helpers.checkpoints import (
    assert_identical,
    loaders,
    make_trainer,
    reference_weights,
    run_worker,
    start_worker,
    wait_for_line,
    weights,
)
from helpers.paths import REPO, WORKER_PYTHONPATH

from callbacks_kit import Callback, ModelCheckpoint, PreemptionHandler, TrainerError

ARGS = ("--epochs", "3", "--preemption")


def _preempt(tmp_path, sig: signal.Signals, nproc: int = 1, after: str = "step 5") -> tuple[int, float, str]:
    """Start a slow run, send `sig` once it printed `after`; returns exit status, seconds, output."""
    process = start_worker("--dir", str(tmp_path / "ckpt"), "--sleep", "0.05", *ARGS, nproc=nproc)
    seen: list[str] = []
    wait_for_line(process, after, seen)
    sent = time.monotonic()
    process.send_signal(sig)  # with torchrun: to the launcher, which passes it to every worker
    output, _ = process.communicate(timeout=60)
    return process.returncode, time.monotonic() - sent, "".join(seen) + output


@pytest.mark.slow
def test_sigterm_saves_exits_and_resumes_exactly(tmp_path):
    status, seconds, output = _preempt(tmp_path, signal.SIGTERM)
    assert status == 128 + signal.SIGTERM, output
    assert "SIGTERM received: finishing the current step" in output
    assert "stopped by SIGTERM" in output and "--resume last" in output
    assert seconds < 60
    print(f"exit {seconds:.2f} s after SIGTERM")
    last = json.loads((tmp_path / "ckpt" / "last.json").read_text())["checkpoint"]
    assert "-batch=" in last  # mid-epoch
    run_worker("--dir", str(tmp_path / "ckpt"), "--resume", "last", "--out", str(tmp_path / "w.safetensors"), *ARGS)
    resumed = safetensors.torch.load_file(str(tmp_path / "w.safetensors"))
    assert_identical(resumed, reference_weights("--epochs", "3"))


@pytest.mark.slow
def test_sigint_and_sigusr1_also_save(tmp_path):
    for sig in (signal.SIGINT, signal.SIGUSR1):
        status, _, output = _preempt(tmp_path / sig.name, sig)
        assert status == 128 + sig, output
        assert (tmp_path / sig.name / "ckpt" / "last.json").exists()


@pytest.mark.slow
def test_sigterm_to_torchrun_stops_both_processes_at_the_same_step_and_resumes_exactly(tmp_path):
    status, seconds, output = _preempt(tmp_path, signal.SIGTERM, nproc=2, after="step 3")
    assert status != 0 and "stopped by SIGTERM" in output, output
    assert seconds < 30  # torchrun kills its workers 30 s after passing the signal on
    folder = tmp_path / "ckpt" / json.loads((tmp_path / "ckpt" / "last.json").read_text())["checkpoint"]
    assert {"rng-rank0.json", "rng-rank1.json"} <= {p.name for p in folder.iterdir()}
    out = tmp_path / "w.safetensors"
    run_worker("--dir", str(tmp_path / "ckpt"), "--resume", "last", "--out", str(out), *ARGS, nproc=2)
    assert_identical(safetensors.torch.load_file(str(out)), reference_weights("--epochs", "3", nproc=2))


class SignalSelf(Callback):
    """Sends a real signal to this very process after optimizer step `step`."""

    def __init__(self, step: int, sig: signal.Signals) -> None:
        self.step, self.sig = step, sig

    def on_train_batch_end(self, trainer) -> None:
        if trainer.state.optimizer_stepped and trainer.state.global_step == self.step:
            os.kill(os.getpid(), self.sig)


def test_in_process_signal_with_accumulation_finishes_the_optimizer_step(tmp_path):
    handler = PreemptionHandler(("SIGUSR1",), exit_after_save=False)
    checkpoint = ModelCheckpoint(tmp_path)
    trainer = make_trainer([handler, checkpoint], accumulation=2)
    before = signal.getsignal(signal.SIGUSR1)

    class SignalMidStep(Callback):  # between the two batches of optimizer step 3
        def on_train_batch_end(self, trainer) -> None:
            if trainer.state.global_step == 2 and not trainer.state.optimizer_stepped:
                os.kill(os.getpid(), signal.SIGUSR1)

    trainer.callbacks.append(SignalMidStep())
    trainer.fit(*loaders(), epochs=3)
    assert handler.signal_received == "SIGUSR1" and trainer.state.global_step == 3
    assert checkpoint.last_name == "epoch=0001-batch=0006-step=00000003"
    assert signal.getsignal(signal.SIGUSR1) is before  # handlers put back
    resumed = make_trainer([ModelCheckpoint(tmp_path)], accumulation=2)
    resumed.fit(*loaders(), epochs=3, resume_from="last")
    reference = make_trainer([ModelCheckpoint(tmp_path / "ref")], accumulation=2)
    reference.fit(*loaders(), epochs=3)
    assert_identical(weights(resumed), weights(reference))


def test_second_ctrl_c_aborts_without_saving():
    handler = PreemptionHandler()
    handler._handle(signal.SIGINT, None)
    with pytest.raises(KeyboardInterrupt, match="without saving"):
        handler._handle(signal.SIGINT, None)


def test_needs_a_model_checkpoint_and_known_signals():
    with pytest.raises(TrainerError, match="unknown signals"):
        PreemptionHandler(("SIGNOPE",))
    with pytest.raises(TrainerError, match="PreemptionHandler saves through a ModelCheckpoint and the trainer has 0"):
        make_trainer([PreemptionHandler()]).fit(*loaders())


# A run whose batches come from two forked DataLoader workers, which inherit the signal handlers.
WORKERS_SCRIPT = """
import sys, time
import torch
from torch.utils.data import DataLoader, Dataset
from callbacks_kit import Callback, ModelCheckpoint, PreemptionHandler, Trainer

class Slow(Dataset):
    def __len__(self):
        return 512
    def __getitem__(self, i):
        time.sleep(0.01)
        return torch.randn(4), i % 2

class Started(Callback):
    def on_train_batch_end(self, trainer):
        if trainer.state.global_step == 2:
            print("training", flush=True)

model = torch.nn.Linear(4, 2)
trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), torch.nn.CrossEntropyLoss(), progress_bar=False,
                  callbacks=[Started(), ModelCheckpoint(sys.argv[1]), PreemptionHandler()])
trainer.fit(DataLoader(Slow(), batch_size=4, num_workers=2), epochs=20)
"""


@pytest.mark.slow
def test_one_ctrl_c_in_a_terminal_prints_its_message_once_with_dataloader_workers(tmp_path):
    # A terminal's Ctrl-C signals the whole foreground process group: the DataLoader workers too.
    process = subprocess.Popen(
        [sys.executable, "-c", WORKERS_SCRIPT, str(tmp_path / "ckpt")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": WORKER_PYTHONPATH},
        start_new_session=True,
    )
    seen: list[str] = []
    wait_for_line(process, "training", seen)
    os.killpg(process.pid, signal.SIGINT)
    output = "".join(seen) + process.communicate(timeout=120)[0]
    assert process.returncode == 128 + signal.SIGINT, output
    assert output.count("SIGINT received: finishing the current step") == 1, output
    assert output.count("stopped by SIGINT") == 1 and (tmp_path / "ckpt" / "last.json").exists()
