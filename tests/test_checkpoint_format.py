"""The checkpoint format: JSON + safetensors round trips, the atomic layout, and bad input."""

from __future__ import annotations

import binascii
import errno
import json
import random
import shutil

import numpy as np
import pytest
import safetensors.torch
import torch
from fixtures.make_checkpoint_v0_1_0 import CHECKPOINT_NAME, FIXTURE
from helpers.checkpoints import ScriptedScore, StopAtStep, loaders, make_trainer, weights

from callbacks_kit import Callback, CheckpointError, ModelCheckpoint
from callbacks_kit.checkpoint import store
from callbacks_kit.checkpoint.codec import (
    StateFormatError,
    apply_rng_states,
    capture_rng_states,
    host_tensors,
    join_tensors,
    split_tensors,
)
from callbacks_kit.checkpoint.restore import read_checkpoint, resolve_checkpoint


def test_split_and_join_keep_tensors_tuples_and_int_keys():
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=torch.tensor(0.01), betas=(0.8, 0.9))
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    doc = json.loads(json.dumps(split_tensors(state, tensors, "optimizer")))
    back = join_tensors(doc, tensors)
    assert back["param_groups"][0]["betas"] == (0.8, 0.9) and set(back["state"]) == {0, 1}
    assert torch.equal(back["state"][1]["exp_avg"], state["state"][1]["exp_avg"])
    assert torch.equal(back["param_groups"][0]["lr"], state["param_groups"][0]["lr"])
    plain = {"a": [1, None, "x", np.float64(2.5)]}
    assert join_tensors(split_tensors(plain, {}, "s"), {}) == {"a": [1, None, "x", 2.5]}


def test_tied_weights_and_views_are_saved(tmp_path):
    model = torch.nn.Sequential(torch.nn.Embedding(5, 4), torch.nn.Linear(4, 5, bias=False))
    model[1].weight = model[0].weight  # tied, as in language models
    tensors = host_tensors({**model.state_dict(), "view": torch.arange(10.0)[::2]})
    loaded = safetensors.torch.load(safetensors.torch.save(tensors))
    assert torch.equal(loaded["0.weight"], loaded["1.weight"]) and loaded["view"].tolist() == [0, 2, 4, 6, 8]


def test_split_refuses_arbitrary_objects():
    with pytest.raises(StateFormatError, match=r"callbacks\.cb\.fn is a function"):
        split_tensors({"fn": test_split_refuses_arbitrary_objects}, {}, "callbacks.cb")


def test_rng_states_round_trip_through_json():
    states = json.loads(json.dumps(capture_rng_states()))
    expected = (random.random(), np.random.rand(), torch.rand(1))
    apply_rng_states(states)
    assert (random.random(), np.random.rand()) == expected[:2] and torch.equal(torch.rand(1), expected[2])


def _train(tmp_path, epochs: int = 1, **kwargs) -> tuple:
    checkpoint = ModelCheckpoint(tmp_path / "ckpt", **kwargs)
    trainer = make_trainer([checkpoint])
    trainer.fit(*loaders(), epochs=epochs)
    return trainer, checkpoint


def test_layout_after_a_save(tmp_path):
    trainer, checkpoint = _train(tmp_path)
    folder = checkpoint.last_path
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["epoch=0001-step=00000008", "last.json"]
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["meta.json", "model.safetensors", "rng-rank0.json", "state.json", "state.safetensors"]
    meta = json.loads((folder / "meta.json").read_text())
    assert (meta["world_size"], meta["epoch"], meta["batch"], meta["global_step"]) == (1, 1, 0, 8)
    for name, info in meta["files"].items():
        data = (folder / name).read_bytes()
        assert info == {"bytes": len(data), "crc32": f"{binascii.crc32(data):08x}"}
    loaded = read_checkpoint(folder)
    assert all(torch.equal(loaded.tensors("model.safetensors")[k], v) for k, v in weights(trainer).items())


def _flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:-100]), "truncated"),
        (lambda f: _flip_a_byte(f / "state.safetensors"), "corrupt"),
        (lambda f: (f / "rng-rank0.json").unlink(), "incomplete"),
        (lambda f: (f / "meta.json").write_text("{not json"), "meta.json is corrupt"),
        (lambda f: (f / "meta.json").unlink(), "not a checkpoint folder"),
    ],
    ids=["truncated", "flipped-byte", "missing-file", "bad-meta", "no-meta"],
)
def test_damaged_checkpoints_are_refused_and_left_alone(tmp_path, damage, message):
    _, checkpoint = _train(tmp_path)
    folder = checkpoint.last_path
    damage(folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    trainer = make_trainer([ModelCheckpoint(tmp_path / "ckpt")])
    with pytest.raises(CheckpointError, match=message):
        trainer.fit(*loaders(), epochs=2, resume_from=str(folder))
    assert trainer.state.global_step == 0
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_a_version_1_folder_is_checked_against_its_sha256(tmp_path):
    """Checkpoints of format version 1 (0.1.0's fixture) record sha256: still read, and damage still found."""
    folder = shutil.copytree(FIXTURE / CHECKPOINT_NAME, tmp_path / CHECKPOINT_NAME)
    assert json.loads((folder / "meta.json").read_text())["version"] == 1
    assert read_checkpoint(folder).tensors("model.safetensors")
    _flip_a_byte(folder / "state.safetensors")
    with pytest.raises(CheckpointError, match="state.safetensors is corrupt"):
        read_checkpoint(folder)


def test_a_meta_entry_without_a_checksum_is_refused(tmp_path):
    _, checkpoint = _train(tmp_path)
    meta_path = checkpoint.last_path / "meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["files"]["model.safetensors"]["crc32"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="model.safetensors is corrupt"):
        read_checkpoint(checkpoint.last_path)


def test_checkpoint_of_a_different_model_is_refused(tmp_path):
    _, checkpoint = _train(tmp_path)
    other = make_trainer([], width=16)
    with pytest.raises(CheckpointError, match=r"different model: .*0\.weight: \[32, 8\] in the checkpoint, \[16, 8\]"):
        other.fit(*loaders(), resume_from=str(checkpoint.last_path))


def test_bad_resume_paths_say_what_to_pass(tmp_path):
    _, checkpoint = _train(tmp_path)
    directory = tmp_path / "ckpt"
    with pytest.raises(CheckpointError, match=r"does not exist \(checkpoints in .*epoch=0001-step=00000008"):
        resolve_checkpoint(directory / "nope", None)
    with pytest.raises(CheckpointError, match="is a file"):
        resolve_checkpoint(checkpoint.last_path / "model.safetensors", None)
    with pytest.raises(CheckpointError, match="not a checkpoint folder"):
        resolve_checkpoint(tmp_path, None)
    with pytest.raises(CheckpointError, match="has no ModelCheckpoint"):
        resolve_checkpoint("last", None)
    assert resolve_checkpoint(directory, None) == checkpoint.last_path  # the folder holding last.json
    assert resolve_checkpoint(directory / "last.json", None) == checkpoint.last_path
    (directory / ".tmp-x").mkdir()
    with pytest.raises(CheckpointError, match="unfinished save"):
        resolve_checkpoint(directory / ".tmp-x", None)


@pytest.mark.parametrize("async_save", [True, False], ids=["async", "sync"])
def test_disk_full_during_a_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch, async_save):
    directory = tmp_path / "ckpt"
    make_trainer([ModelCheckpoint(directory)]).fit(*loaders(), epochs=1)
    previous = directory / "epoch=0001-step=00000008"
    pointer = (directory / "last.json").read_bytes()
    real_write = store._write_file

    def full_disk(path, data):
        if path.name == "state.json":  # after model.safetensors is already written
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_write(path, data)

    monkeypatch.setattr(store, "_write_file", full_disk)
    trainer = make_trainer([ModelCheckpoint(directory, async_save=async_save)])
    with pytest.raises(CheckpointError) as info:
        trainer.fit(*loaders(), epochs=2, resume_from="last")
    message = str(info.value)
    assert "No space left on device" in message and "writing state.json" in message
    assert "'epoch=0001-step=00000008' is intact" in message
    assert "Nothing was lost" not in message  # epoch 2 is: the message says so
    assert "Not saved: the training after 'epoch=0001-step=00000008', up to the end of epoch 2 (optimizer step 16)" in (
        message
    )
    assert sorted(p.name for p in directory.iterdir()) == [previous.name, "last.json"]  # temp folder removed
    assert (directory / "last.json").read_bytes() == pointer
    read_checkpoint(previous)  # still whole
    monkeypatch.setattr(store, "_write_file", real_write)
    make_trainer([ModelCheckpoint(directory)]).fit(*loaders(), epochs=2, resume_from="last")
    assert json.loads((directory / "last.json").read_text())["checkpoint"] == "epoch=0002-step=00000016"


@pytest.mark.parametrize("async_save", [True, False], ids=["async", "sync"])
def test_failed_pointer_update_is_reported_and_last_stays_loadable(tmp_path, monkeypatch, async_save):
    directory = tmp_path / "ckpt"
    make_trainer([ModelCheckpoint(directory)]).fit(*loaders(), epochs=1)
    real_write = store._write_file
    monkeypatch.setattr(
        store,
        "_write_file",
        lambda p, d: (
            (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device", str(p)))
            if p.name == ".tmp-last.json"
            else real_write(p, d)
        ),
    )
    with pytest.raises(CheckpointError, match="was committed .* but updating last.json .* failed"):
        make_trainer([ModelCheckpoint(directory, async_save=async_save)]).fit(*loaders(), epochs=2, resume_from="last")
    assert json.loads((directory / "last.json").read_text())["checkpoint"] == "epoch=0001-step=00000008"
    read_checkpoint(resolve_checkpoint("last", directory))


class _CountBatches(Callback):
    def __init__(self) -> None:
        self.batches = 0

    def on_train_batch_start(self, trainer) -> None:
        self.batches += 1


def test_unwritable_checkpoint_folder_fails_before_any_training(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # a folder under a file cannot be created, even by root
    counter = _CountBatches()
    trainer = make_trainer([ModelCheckpoint(blocker / "checkpoints"), counter])
    with pytest.raises(CheckpointError, match=r"checkpoint folder .*a-file/checkpoints is not writable"):
        trainer.fit(*loaders(), epochs=1)
    assert counter.batches == 0 and blocker.read_text() == "not a folder"


def test_leftovers_of_a_killed_save_are_cleaned_at_start(tmp_path):
    directory = tmp_path / "ckpt"
    (directory / ".tmp-epoch=0001-step=00000008").mkdir(parents=True)
    (directory / ".tmp-epoch=0001-step=00000008" / "model.safetensors").write_bytes(b"half")
    (directory / ".trash-epoch=0000-step=00000004").mkdir()
    (directory / ".tmp-last.json").write_text("{")
    make_trainer([ModelCheckpoint(directory), StopAtStep(1)]).fit(*loaders(), epochs=1)
    assert sorted(p.name for p in directory.iterdir()) == ["epoch=0001-batch=0001-step=00000001", "last.json"]


class _Folder(Callback):
    """A callback that names a checkpoint folder without being a ModelCheckpoint."""

    def __init__(self, folder) -> None:
        self.folder = folder

    @property
    def checkpoint_dir(self):
        return self.folder


def test_resume_from_last_looks_in_the_folder_a_callback_names(tmp_path):
    _train(tmp_path)
    assert make_trainer([]).callbacks.checkpoint_dir() is None
    trainer = make_trainer([_Folder(tmp_path / "ckpt")])
    assert trainer.callbacks.checkpoint_dir() == tmp_path / "ckpt"
    trainer.fit(*loaders(), epochs=1, resume_from="last")
    assert trainer.state.global_step == 8  # restored, nothing left to train


def test_a_resume_with_another_save_cadence_keeps_the_best_scores(tmp_path, capsys):
    scores = [0.3, 0.9, 0.5, 0.4]  # the best is epoch 2's
    first = ModelCheckpoint(tmp_path / "ckpt", monitor="val/score", mode="max")
    make_trainer([ScriptedScore(scores), first]).fit(*loaders(), epochs=2)
    # Resumed with saves every 3 steps as well (`--save-every-steps 3`): the same ranking goes on.
    again = ModelCheckpoint(tmp_path / "ckpt", monitor="val/score", mode="max", every_n_steps=3)
    make_trainer([ScriptedScore(scores), again]).fit(*loaders(), epochs=4, resume_from="last")
    assert again.best_k == {"epoch=0002-step=00000016": 0.9}  # epochs 3 and 4 scored less: kept from before
    assert "saved but unused" not in capsys.readouterr().out
