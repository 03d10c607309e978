"""Where a step's time goes: the wait for the data loader, logged at log steps and per epoch, and the warning.

A deliberately slow dataset (it sleeps in `__getitem__`) makes the loop input-bound; the same
model on pre-made tensors is not. What users look at is read back as they read it: the
TensorBoard scalars with TensorBoard's own loader, the warning, and the per-epoch line.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import pytest
import torch
from helpers.tiny import tiny_classification_data, tiny_mlp
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, Dataset

from benchmarks.sync_counter import syncs_per_step
from callbacks_kit import ProgressBar, TensorBoardLogger, Trainer

SLEEP_S = 0.05  # per sample: 200 ms per batch of 4, against a tiny MLP's step of about 1 ms (tens under load)


class SlowDataset(Dataset):
    """A dataset whose samples take `SLEEP_S` each to load, like images decoded from a slow disk."""

    def __init__(self, n: int) -> None:
        self.data = tiny_classification_data(n)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        time.sleep(SLEEP_S)
        return self.data[index]


class SlowModel(nn.Module):
    """A model whose forward takes `SLEEP_S`, like a large network: a step far longer than fetching its batch."""

    def __init__(self) -> None:
        super().__init__()
        self.mlp = tiny_mlp()

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        time.sleep(SLEEP_S)
        return self.mlp(inputs)


def fit(folder: Path, dataset: Dataset, model: nn.Module, epochs: int = 2):
    """Train with a TensorBoardLogger and the summary line; the warnings, the state and the scalars."""
    trainer = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.01),
        nn.CrossEntropyLoss(),
        callbacks=[TensorBoardLogger(str(folder), graph=False, summary=False), ProgressBar(bar=False)],
        log_every_n_steps=2,
        progress_bar=False,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        state = trainer.fit(DataLoader(dataset, batch_size=4), epochs=epochs)
    scalars = EventAccumulator(str(folder), size_guidance={"scalars": 0}).Reload()
    messages = [str(w.message) for w in caught if "input-bound" in str(w.message)]
    return messages, state, scalars


@pytest.fixture(scope="module")
def slow_run(tmp_path_factory):
    return fit(tmp_path_factory.mktemp("slow"), SlowDataset(24), tiny_mlp())  # 6 batches, 1.2 s of waiting per epoch


def test_a_slow_dataset_is_reported_input_bound_once_with_what_to_try(slow_run, capsys):
    messages, state, _ = slow_run
    assert len(messages) == 1, messages  # the first input-bound epoch, not every epoch
    (message,) = messages
    assert message.startswith("input-bound: training waited for data") and "of epoch 1 (" in message
    assert "\n" not in message
    for advice in ("--workers", "num_workers", "--image-size", "decoding"):
        assert advice in message
    assert state.metrics["perf/epoch_data_wait_fraction"] > 0.5


def test_the_wait_is_logged_at_log_steps_and_per_epoch(slow_run):
    _, state, scalars = slow_run
    at_log_steps = scalars.Scalars("perf/data_wait_fraction")
    assert [e.step for e in at_log_steps] == [2, 4, 6, 8, 10, 12]
    assert all(0.3 < e.value <= 1.0 for e in at_log_steps), [e.value for e in at_log_steps]
    per_epoch = scalars.Scalars("perf/epoch_data_wait_fraction")
    assert [e.step for e in per_epoch] == [6, 12] and all(0.5 < e.value <= 1.0 for e in per_epoch)
    assert "perf/samples_per_sec" in scalars.Tags()["scalars"]  # as before, beside it


def test_the_epoch_line_says_input_bound(tmp_path, capsys):
    # A run of its own: capsys sees only what the test itself prints.
    messages, state, _ = fit(tmp_path, SlowDataset(8), tiny_mlp(), epochs=1)  # 2 batches: under the 1 s floor
    line = capsys.readouterr().out
    share = state.metrics["perf/epoch_data_wait_fraction"]
    assert f"waiting for data {share:.0%}: input-bound)" in line and share > 0.5
    assert messages == []  # 0.4 s of waiting in all: too little to warn about


def test_a_fast_pipeline_does_not_warn(tmp_path, capsys):
    # Pre-made tensors: a batch is an index and a stack, against a step of at least 50 ms.
    dataset, model = tiny_classification_data(96), SlowModel()
    messages, state, scalars = fit(tmp_path, dataset, model, epochs=2)
    assert messages == []
    assert state.metrics["perf/epoch_data_wait_fraction"] < 0.3
    assert all(e.value < 0.3 for e in scalars.Scalars("perf/data_wait_fraction"))
    lines = capsys.readouterr().out
    assert lines.count("waiting for data") == 2 and "input-bound" not in lines


def test_timing_the_wait_adds_no_host_read():
    """A log step still reads the device once, the loss, norm and wait together; other steps never."""
    model = tiny_mlp()
    trainer = Trainer(
        model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(), log_every_n_steps=4, seed=0
    )
    steps = syncs_per_step(trainer, DataLoader(tiny_classification_data(96), batch_size=8), epochs=1)
    logged = [events for is_log, events in steps if is_log]
    quiet = [events for is_log, events in steps if not is_log]
    assert len(logged) == 3 and quiet == [[]] * 9
    assert all(len([e for e in events if "train_log.py" in e]) == 1 for events in logged), logged
    assert 0.0 <= trainer.state.metrics["perf/data_wait_fraction"] <= 1.0
