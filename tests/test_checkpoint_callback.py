"""ModelCheckpoint: which folders it keeps, the best-weights export, and its options."""

from __future__ import annotations

import ctypes
import json
import math
import mmap
import os
import sys

import pytest
import safetensors
import safetensors.torch
import torch
from helpers.checkpoints import ScriptedScore, StopAtStep, loaders, make_trainer

from callbacks_kit import ModelCheckpoint, TrainerError
from callbacks_kit.finetune import load_weights


def _folders(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.is_dir())


def _last(directory) -> str:
    return json.loads((directory / "last.json").read_text())["checkpoint"]


def test_keeps_the_best_k_and_the_last_and_exports_the_best_weights(tmp_path):
    scores = [0.2, 0.9, 0.5, 0.7, 0.1]
    checkpoint = ModelCheckpoint(tmp_path, monitor="val/score", mode="max", save_top_k=2)
    make_trainer([ScriptedScore(scores), checkpoint]).fit(*loaders(), epochs=5)
    best, second, last = "epoch=0002-step=00000016", "epoch=0004-step=00000032", "epoch=0005-step=00000040"
    assert _folders(tmp_path) == [best, second, last]
    assert checkpoint.best_k == {best: 0.9, second: 0.7} and checkpoint.best_model_path == tmp_path / best
    assert _last(tmp_path) == last
    exported = tmp_path / "best.safetensors"
    assert exported.read_bytes() == (tmp_path / best / "model.safetensors").read_bytes()
    with safetensors.safe_open(exported, "pt") as f:
        assert f.metadata()["monitor"] == "val/score" and float(f.metadata()["score"]) == 0.9
    model = make_trainer([]).unwrapped_model
    assert load_weights(model, exported, strict=True).missing == []


def test_min_mode_and_nan_is_never_best(tmp_path):
    checkpoint = ModelCheckpoint(tmp_path, monitor="val/score", mode="min", save_top_k=1, save_last=False)
    make_trainer([ScriptedScore([0.5, math.nan, 0.3, 0.4]), checkpoint]).fit(*loaders(), epochs=4)
    assert _folders(tmp_path) == ["epoch=0003-step=00000024"] == [_last(tmp_path)]
    assert checkpoint.best_k == {"epoch=0003-step=00000024": 0.3}


def test_without_monitor_only_the_last_is_kept(tmp_path):
    make_trainer([ModelCheckpoint(tmp_path)]).fit(*loaders(), epochs=3)
    assert _folders(tmp_path) == ["epoch=0003-step=00000024"] and not (tmp_path / "best.safetensors").exists()


def test_every_n_steps_and_every_n_epochs(tmp_path):
    saved: list[str] = []
    checkpoint = ModelCheckpoint(tmp_path, every_n_epochs=2, every_n_steps=5)
    original = checkpoint._save

    def spy(trainer, **kwargs):
        original(trainer, **kwargs)
        checkpoint.save_now(trainer)  # nothing new to save: waits for the background save's commit
        saved.append(_last(tmp_path))

    checkpoint._save = spy
    make_trainer([checkpoint]).fit(*loaders(), epochs=3)
    assert saved == [
        "epoch=0001-batch=0005-step=00000005",
        "epoch=0002-batch=0002-step=00000010",
        "epoch=0002-batch=0007-step=00000015",
        "epoch=0002-step=00000016",
        "epoch=0003-batch=0004-step=00000020",
        "epoch=0003-step=00000024",  # the last epoch is always saved
    ]
    assert _folders(tmp_path) == ["epoch=0003-step=00000024"]


def test_a_stop_mid_epoch_saves_that_position(tmp_path):
    make_trainer([ModelCheckpoint(tmp_path, every_n_epochs=None), StopAtStep(6)]).fit(*loaders(), epochs=3)
    assert _folders(tmp_path) == ["epoch=0001-batch=0006-step=00000006"]
    state = json.loads((tmp_path / _last(tmp_path) / "state.json").read_text())["trainer"]
    assert (state["epoch"], state["batch_idx"], state["should_stop"]) == (0, 6, False)


def test_a_taken_name_gets_a_version_suffix(tmp_path):
    make_trainer([ModelCheckpoint(tmp_path)]).fit(*loaders(), epochs=1)
    make_trainer([ModelCheckpoint(tmp_path)]).fit(*loaders(), epochs=1)  # a new run in the same folder
    assert _last(tmp_path) == "epoch=0001-step=00000008-v1"
    assert _folders(tmp_path) == ["epoch=0001-step=00000008", "epoch=0001-step=00000008-v1"]


def test_missing_monitor_fails_at_the_first_validation_listing_the_keys(tmp_path):
    trainer = make_trainer([ModelCheckpoint(tmp_path / "c", monitor="val/acc", mode="max")])
    with pytest.raises(TrainerError, match=r"'val/acc'.*train/epoch_loss, val/accuracy, val/loss.*'val/accuracy'"):
        trainer.fit(*loaders(), epochs=2)
    assert trainer.state.epoch == 0 and _folders(tmp_path / "c") == []


def test_missing_monitor_without_validation_fails_at_the_first_epoch_end(tmp_path):
    trainer = make_trainer([ModelCheckpoint(tmp_path, monitor="val/loss")])
    with pytest.raises(TrainerError, match="need a val_loader"):
        trainer.fit(loaders()[0], epochs=1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "best"}, "mode='best'"),
        ({"save_top_k": -2}, "save_top_k"),
        ({"every_n_steps": 0}, "every_n_steps"),
        ({"monitor": ""}, "monitor must be"),
    ],
)
def test_bad_options(tmp_path, kwargs, message):
    with pytest.raises(TrainerError, match=message):
        ModelCheckpoint(tmp_path, **kwargs)


def test_state_dict_round_trip_and_changed_monitor(tmp_path):
    checkpoint = ModelCheckpoint(tmp_path, monitor="val/loss")
    make_trainer([checkpoint]).fit(*loaders(), epochs=2)
    state = json.loads(json.dumps(checkpoint.state_dict()))
    again = ModelCheckpoint(tmp_path, monitor="val/loss")
    again.load_state_dict(state)
    assert again.state_dict() == state
    other = ModelCheckpoint(tmp_path, monitor="val/accuracy", mode="max")
    other.load_state_dict(state)
    assert other.best_k == {} and other.last_name == state["last"]


def test_saved_weights_match_the_model(tmp_path):
    checkpoint = ModelCheckpoint(tmp_path)
    trainer = make_trainer([checkpoint])
    trainer.fit(*loaders(), epochs=1)
    saved = safetensors.torch.load_file(checkpoint.last_path / "model.safetensors")
    assert all(torch.equal(saved[k], v) for k, v in trainer.unwrapped_model.state_dict().items())


def _cached_pages(path) -> int:
    """How many of the file's pages are in the page cache (mincore on a mapping; touches none)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    size, page = path.stat().st_size, mmap.PAGESIZE
    if not size:
        return 0
    fd = os.open(path, os.O_RDONLY)
    try:
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert address not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
        vector = ctypes.create_string_buffer((size + page - 1) // page)
        try:
            assert libc.mincore(address, size, vector) == 0, os.strerror(ctypes.get_errno())
        finally:
            libc.munmap(address, size)
    finally:
        os.close(fd)
    return sum(byte & 1 for byte in vector.raw)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mincore and posix_fadvise as Linux has them")
@pytest.mark.parametrize("async_save", [False, True])
def test_saved_files_leave_the_page_cache_once_on_disk(tmp_path, async_save):
    control = tmp_path / "control.bin"
    with open(control, "wb") as f:
        f.write(os.urandom(1 << 16))
        f.flush()
        os.fsync(f.fileno())
    if not _cached_pages(control):
        pytest.skip("this filesystem does not keep written pages in the page cache")
    checkpoint = ModelCheckpoint(tmp_path / "ckpt", monitor="val/score", mode="max", async_save=async_save)
    make_trainer([ScriptedScore([0.2, 0.9, 0.5]), checkpoint]).fit(*loaders(), epochs=3)
    files = [p for p in (tmp_path / "ckpt").rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"best.safetensors", "model.safetensors", "state.safetensors", "last.json"}
    assert {p.relative_to(tmp_path).as_posix(): _cached_pages(p) for p in files} == {
        p.relative_to(tmp_path).as_posix(): 0 for p in files
    }
    assert _cached_pages(control) > 0  # what a write leaves without the drop
