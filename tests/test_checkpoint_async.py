"""Asynchronous saves: the loop goes on while a consistent snapshot is written; failures surface later, intact."""

from __future__ import annotations

import errno
import json
import subprocess
import threading

import pytest
import safetensors.torch
import torch
from helpers.checkpoints import assert_identical, loaders, make_trainer, weights, worker_command

from callbacks_kit import Callback, CheckpointError, ModelCheckpoint
from callbacks_kit.callbacks import model_checkpoint
from callbacks_kit.checkpoint import store
from callbacks_kit.checkpoint.codec import safetensors_parts
from callbacks_kit.checkpoint.restore import read_checkpoint
from callbacks_kit.checkpoint.snapshot import HostSnapshot


def _save_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("checkpoint ")]


class _Recorder(Callback):
    """Keeps the weights at every optimizer step, and releases `gate` once the loop reaches `release_at`."""

    order = 1000  # after ModelCheckpoint: the save of a step is already handed over

    def __init__(self, release_at: int, gate: threading.Event) -> None:
        self.release_at, self.gate, self.at_step = release_at, gate, {}

    def on_train_batch_end(self, trainer) -> None:
        self.at_step[trainer.state.global_step] = weights(trainer)
        if trainer.state.global_step == self.release_at:
            self.gate.set()


def test_training_goes_on_while_the_snapshot_is_written(tmp_path, monkeypatch):
    gate, real_write, waited = threading.Event(), store._write_file, []

    def slow_write(path, data):
        if path.name == "model.safetensors":
            waited.append(gate.wait(timeout=30))  # the loop must reach step 5 while this save is in flight
        real_write(path, data)

    monkeypatch.setattr(store, "_write_file", slow_write)
    monkeypatch.setattr(model_checkpoint, "remove_folder", lambda folder: None)  # keep step 3's to read it
    recorder = _Recorder(release_at=5, gate=gate)
    checkpoint = ModelCheckpoint(tmp_path, every_n_steps=3, every_n_epochs=None)
    make_trainer([checkpoint, recorder]).fit(*loaders(), epochs=1)
    assert waited and all(waited), "a save blocked the loop until its files were written"
    saved = read_checkpoint(tmp_path / "epoch=0001-batch=0003-step=00000003").tensors("model.safetensors")
    assert all(torch.equal(saved[k], v) for k, v in recorder.at_step[3].items())  # the state of step 3, not later
    assert any(not torch.equal(recorder.at_step[5][k], v) for k, v in recorder.at_step[3].items())
    assert json.loads((tmp_path / "last.json").read_text())["checkpoint"] == "epoch=0001-step=00000008"
    assert not _save_threads()  # fit returned after the last save was committed


class _WaitForSave(Callback):
    """At optimizer step `step`, before ModelCheckpoint looks, waits for the background save to end (any machine)."""

    order = 100

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer) -> None:
        if trainer.state.global_step == self.step:
            for thread in threading.enumerate():
                if thread.name.startswith("checkpoint "):
                    thread.join()


def test_a_background_save_failing_twice_surfaces_at_the_next_step_and_keeps_the_previous(tmp_path, monkeypatch):
    real_write = store._write_file

    def full(path, data):
        if path.name == "state.safetensors" and "step=00000004" in path.parent.name:  # the save of step 4, twice
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_write(path, data)

    monkeypatch.setattr(store, "_write_file", full)
    checkpoint = ModelCheckpoint(tmp_path, every_n_steps=2, every_n_epochs=None)
    trainer = make_trainer([checkpoint, _WaitForSave(5)])
    with pytest.raises(CheckpointError) as info:
        trainer.fit(*loaders(), epochs=1)
    message = str(info.value)
    assert "could not save checkpoint 'epoch=0001-batch=0004-step=00000004'" in message
    assert "writing state.safetensors: No space left on device" in message and "a second try failed too" in message
    assert "'epoch=0001-batch=0002-step=00000002' is intact" in message
    assert "Nothing was lost" not in message
    assert "Not saved: the training after 'epoch=0001-batch=0002-step=00000002', up to batch 5 of epoch 1" in message
    assert trainer.state.global_step == 5  # raised at the step boundary after the failure, not by the next save
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch=0001-batch=0002-step=00000002", "last.json"]
    read_checkpoint(tmp_path / "epoch=0001-batch=0002-step=00000002")
    assert checkpoint.last_name == "epoch=0001-batch=0002-step=00000002"  # its record rolled back too
    assert not _save_threads()


def _pointers(monkeypatch) -> list[str]:
    """Every folder last.json is pointed at, in order."""
    names: list[str] = []
    real = model_checkpoint.write_pointer
    monkeypatch.setattr(model_checkpoint, "write_pointer", lambda d, name: (names.append(name), real(d, name)))
    return names


def test_a_background_save_failing_once_is_saved_by_a_second_try_at_the_next_step(tmp_path, monkeypatch):
    real_write, full = store._write_file, {"epoch=0002-step=00000016"}  # no space for this save, once

    def full_once(path, data):
        if path.name == "state.json" and path.parent.name.removeprefix(".tmp-") in full:
            full.clear()
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_write(path, data)

    monkeypatch.setattr(store, "_write_file", full_once)
    pointers = _pointers(monkeypatch)
    trainer = make_trainer([ModelCheckpoint(tmp_path), _WaitForSave(17)])
    with pytest.warns(UserWarning, match=r"'epoch=0002-step=00000016' .* a second try at optimizer step 17 saved it"):
        trainer.fit(*loaders(), epochs=3)
    assert pointers == ["epoch=0001-step=00000008", "epoch=0002-step=00000016", "epoch=0003-step=00000024"]
    read_checkpoint(tmp_path / "epoch=0003-step=00000024")
    assert not _save_threads()


def test_the_last_save_failing_once_is_saved_by_a_second_try_at_fit_end(tmp_path, monkeypatch):
    real_write, full = store._write_file, {"epoch=0002-step=00000016"}

    def full_once(path, data):
        if path.name == "model.safetensors" and path.parent.name.removeprefix(".tmp-") in full:
            full.clear()
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_write(path, data)

    monkeypatch.setattr(store, "_write_file", full_once)
    with pytest.warns(UserWarning, match="a second try saved it"):
        make_trainer([ModelCheckpoint(tmp_path)]).fit(*loaders(), epochs=2)
    assert json.loads((tmp_path / "last.json").read_text())["checkpoint"] == "epoch=0002-step=00000016"
    read_checkpoint(tmp_path / "epoch=0002-step=00000016")


def test_no_space_for_epoch_2_stops_in_epoch_3_and_a_resume_saves_epoch_3_once_there_is(tmp_path, monkeypatch):
    real_write, no_space = store._write_file, [True]

    def full(path, data):
        if no_space[0] and "epoch=0002" in path.parent.name:
            raise OSError(errno.ENOSPC, "No space left on device")  # as os.write raises it: no file name
        real_write(path, data)

    monkeypatch.setattr(store, "_write_file", full)
    trainer = make_trainer([ModelCheckpoint(tmp_path), _WaitForSave(17)])
    with pytest.raises(CheckpointError) as info:
        trainer.fit(*loaders(), epochs=3)
    message = str(info.value)
    assert message.startswith("could not save checkpoint 'epoch=0002-step=00000016'")
    assert "No space left on device (a second try failed too)" in message and "(None)" not in message
    assert "Nothing was lost" not in message and "'epoch=0001-step=00000008' is intact" in message
    assert message.endswith(
        "Not saved: the training after 'epoch=0001-step=00000008', up to batch 1 of epoch 3 (optimizer step 17); "
        "a resume from it repeats that."
    )
    assert trainer.state.global_step == 17  # epoch 3 did not train in full for nothing
    no_space[0] = False  # space came back
    resumed = make_trainer([ModelCheckpoint(tmp_path)])
    resumed.fit(*loaders(), epochs=3, resume_from="last")
    assert json.loads((tmp_path / "last.json").read_text())["checkpoint"] == "epoch=0003-step=00000024"
    uninterrupted = make_trainer([ModelCheckpoint(tmp_path / "reference")])
    uninterrupted.fit(*loaders(), epochs=3)
    assert_identical(weights(resumed), weights(uninterrupted))


class _Boom(Callback):
    order = 1000

    def on_train_batch_end(self, trainer) -> None:
        if trainer.state.global_step == 3:
            raise RuntimeError("boom")


def test_an_exception_waits_for_the_save_in_flight(tmp_path, monkeypatch):
    real_write = store._write_file
    started = threading.Event()

    def slow_write(path, data):
        started.set()
        threading.Event().wait(0.3)  # still writing when the loop raises
        real_write(path, data)

    monkeypatch.setattr(store, "_write_file", slow_write)
    checkpoint = ModelCheckpoint(tmp_path, every_n_steps=2, every_n_epochs=None)
    with pytest.raises(RuntimeError, match="boom"):
        make_trainer([checkpoint, _Boom()]).fit(*loaders(), epochs=1)
    assert started.is_set() and not _save_threads()
    assert json.loads((tmp_path / "last.json").read_text())["checkpoint"] == "epoch=0001-batch=0002-step=00000002"
    read_checkpoint(tmp_path / "epoch=0001-batch=0002-step=00000002")
    ModelCheckpoint(tmp_path).on_fit_start(make_trainer([]))  # the folder lock was released


def test_host_snapshot_copies_once_and_reuses_its_buffers():
    live = {"w": torch.randn(4, 3), "b": torch.arange(6.0)[::2], "step": torch.tensor(3)}
    snapshot = HostSnapshot()
    first = snapshot.copy(live, "model")
    snapshot.ready()
    live["w"].add_(1.0)
    assert not torch.equal(first["w"], live["w"]) and first["b"].tolist() == [0.0, 2.0, 4.0]
    pointers = {k: v.data_ptr() for k, v in first.items()}
    second = snapshot.copy(live, "model")
    snapshot.ready()
    assert {k: v.data_ptr() for k, v in second.items()} == pointers and torch.equal(second["w"], live["w"])
    assert snapshot.nbytes == 4 * 12 + 4 * 3 + 8
    snapshot.copy({"w": torch.zeros(2)}, "model")
    snapshot.ready()
    assert snapshot.nbytes == 8  # a changed shape is reallocated; unused buffers are freed


def test_a_snapshot_is_one_buffer_per_file_in_file_order_and_written_as_one_part():
    live = {"w": torch.randn(4, 3), "b": torch.arange(6.0)[::2], "step": torch.tensor(3), "h": torch.randn(5).half(),
            "mask": torch.tensor([True, False]), "empty": torch.zeros(0)}  # fmt: skip
    snapshot = HostSnapshot()
    copies = snapshot.copy(live, "model")
    snapshot.ready()
    parts = safetensors_parts(copies, {"format": "pt"})
    assert len(parts) == 2  # the header, then every tensor's data as one buffer
    expected = safetensors.torch.save({k: v.contiguous().clone() for k, v in live.items()}, metadata={"format": "pt"})
    assert b"".join(bytes(part) for part in parts) == expected
    assert memoryview(parts[1]).nbytes == snapshot.nbytes == 8 + 4 * 12 + 4 * 3 + 2 * 5 + 2


@pytest.mark.parametrize("metadata", [None, {"format": "pt"}, {"format": "pt", "epoch": "3", "step": "7"}])
def test_safetensors_parts_match_the_safetensors_library(metadata):
    tensors = {
        "b": torch.randn(3, 4), "a": torch.zeros(2, dtype=torch.float16), "c": torch.tensor(1),
        "empty": torch.zeros(0), "bf": torch.randn(5).bfloat16(), "mask": torch.tensor([True, False]),
        "i8": torch.ones(3, dtype=torch.int8), "u8": torch.ones(3, dtype=torch.uint8), "d": torch.ones(2).double(),
        "i32": torch.ones(2, dtype=torch.int32), "i16": torch.ones(1, dtype=torch.int16),
    }  # fmt: skip
    ours = b"".join(bytes(part) for part in safetensors_parts(tensors, metadata))
    theirs = safetensors.torch.save(tensors, metadata=metadata)
    if metadata is None or len(metadata) == 1:
        assert ours == theirs
    loaded = safetensors.torch.load(ours)
    assert loaded.keys() == tensors.keys() and all(torch.equal(loaded[k], v) for k, v in tensors.items())
    header = json.loads(ours[8 : 8 + int.from_bytes(ours[:8], "little")])
    assert header.get("__metadata__") == metadata


@pytest.mark.slow
def test_a_save_failing_twice_on_one_of_two_processes_stops_both_with_its_message(tmp_path):
    directory = tmp_path / "ckpt"
    cmd, env = worker_command("--dir", str(directory), "--epochs", "3", "--no-space-for", "epoch=0002",
                              "--no-space-rank", "1", nproc=2)  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "finished at step" not in output
    # Every process raised it (none waits for the other at a collective): a traceback each, which
    # torchrun prefixes with "[rank<N>]: " from torch 2.3 on.
    error = "callbacks_kit.errors.CheckpointError: on process 1: could not save checkpoint 'epoch=0002-step=00000008'"
    raised = [line for line in output.splitlines() if line.endswith(error) or f"{error} in " in line]
    assert len(raised) == 2, output[-4000:]
    assert "writing rng-rank1.json: No space left on device (a second try failed too)" in output
    assert "Not saved: the training after 'epoch=0001-step=00000004'" in output
    assert json.loads((directory / "last.json").read_text())["checkpoint"] == "epoch=0001-step=00000004"
    assert sorted(p.name for p in directory.iterdir() if p.name != ".lock") == ["best.safetensors",
                                                                                   "epoch=0001-step=00000004",
                                                                                   "last.json"]  # fmt: skip
