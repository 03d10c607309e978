"""Asynchronous saves: the loop goes on while a consistent snapshot is written; failures surface later, intact."""

from __future__ import annotations

import errno
import json
import threading

import pytest
import safetensors.torch
import torch
from helpers.checkpoints import loaders, make_trainer, weights

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


def test_a_failed_background_save_surfaces_at_the_next_save_and_keeps_the_previous(tmp_path, monkeypatch):
    real_write, calls = store._write_file, []

    def full_once(path, data):
        calls.append(path.name)
        if path.name == "state.safetensors" and calls.count("state.safetensors") == 2:  # the save of step 4
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_write(path, data)

    monkeypatch.setattr(store, "_write_file", full_once)
    checkpoint = ModelCheckpoint(tmp_path, every_n_steps=2, every_n_epochs=None)
    trainer = make_trainer([checkpoint])
    with pytest.raises(CheckpointError) as info:
        trainer.fit(*loaders(), epochs=1)
    message = str(info.value)
    assert "could not save checkpoint 'epoch=0001-batch=0004-step=00000004'" in message
    assert "writing state.safetensors: No space left on device" in message
    assert "'epoch=0001-batch=0002-step=00000002' is intact" in message
    assert trainer.state.global_step == 6  # raised by the save of step 6, the next one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch=0001-batch=0002-step=00000002", "last.json"]
    read_checkpoint(tmp_path / "epoch=0001-batch=0002-step=00000002")
    assert checkpoint.last_name == "epoch=0001-batch=0002-step=00000002"  # its record rolled back too
    assert not _save_threads()


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
