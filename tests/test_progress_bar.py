"""ProgressBar: the loop pays a counter per batch; the bar is drawn by its own thread, on a time interval."""

from __future__ import annotations

import threading
import time

import pytest
from helpers.checkpoints import loaders, make_trainer
from tqdm.auto import tqdm

from callbacks_kit import Callback, ProgressBar, TrainerError


class _Slow(Callback):
    def on_train_batch_end(self, trainer) -> None:
        time.sleep(0.03)


def _count_updates(monkeypatch) -> list[int]:
    updates: list[int] = []
    real = tqdm.update

    def update(self, n=1):
        updates.append(n)
        return real(self, n)

    monkeypatch.setattr(tqdm, "update", update)
    return updates


def test_batches_cost_no_bar_work_and_the_bar_ends_complete(monkeypatch, capsys):
    updates = _count_updates(monkeypatch)
    bar = ProgressBar(refresh_interval=3600, leave=True)
    trainer = make_trainer([bar])
    trainer.log_every_n_steps = 2
    trainer.fit(*loaders(), epochs=2)
    assert len(updates) == 2 and sum(updates) == 16  # one draw per epoch, at its end: none per batch
    err = capsys.readouterr().err
    assert "epoch 2/2" in err and "8/8" in err and "loss=" in err and "samples_s=" in err
    assert not [t for t in threading.enumerate() if t.name == "progress bar"]


def test_the_bar_is_redrawn_on_its_interval_during_an_epoch(monkeypatch):
    updates = _count_updates(monkeypatch)
    make_trainer([ProgressBar(refresh_interval=0.01), _Slow()]).fit(*loaders(), epochs=1)
    assert len(updates) > 2 and sum(updates) == 8  # redrawn while the epoch ran, counts add up


def test_refresh_interval_must_be_positive():
    with pytest.raises(TrainerError, match="refresh_interval must be a number of seconds > 0"):
        ProgressBar(refresh_interval=0)
