"""Profiler: a window of steps under torch.profiler, a trace that opens, a table in TensorBoard, nothing outside.

The trace is read as Perfetto and chrome://tracing read it (gzipped JSON, `traceEvents`), the
table with TensorBoard's own loader.
"""

from __future__ import annotations

import gzip
import json
import warnings
from pathlib import Path

import pytest
import torch
from helpers.tiny import tiny_classification_data, tiny_mlp
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from callbacks_kit import Callback, Profiler, TensorBoardLogger, Trainer, TrainerError
from callbacks_kit.cli import main


class Running(Callback):
    """Notes, at every step's end, whether the profiler runs (it ends each step after every other callback)."""

    def __init__(self, profiler: Profiler) -> None:
        self.profiler, self.steps = profiler, []

    def on_train_batch_end(self, trainer: Trainer) -> None:
        if self.profiler.running:
            self.steps.append(trainer.state.global_step)


def trainer_with(callbacks: list[Callback]) -> Trainer:
    model = tiny_mlp()
    return Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        nn.CrossEntropyLoss(),
        callbacks=callbacks,
        progress_bar=False,
    )


def trace_events(path: Path) -> list[dict]:
    with gzip.open(path, "rt") as file:
        return json.load(file)["traceEvents"]


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    """Two epochs of 8 steps; wait 2, warm-up 1, 3 recorded: steps 4 to 6."""
    folder = tmp_path_factory.mktemp("run")
    profiler = Profiler(wait=2, warmup=1, active=3)
    running = Running(profiler)
    trainer = trainer_with([TensorBoardLogger(str(folder), graph=False, summary=False), profiler, running])
    trainer.fit(DataLoader(tiny_classification_data(64), batch_size=8), epochs=2)
    return folder, profiler, running


def test_the_trace_opens_and_holds_the_window_steps_alone(profiled):
    folder, profiler, _ = profiled
    assert profiler.trace_path == folder / "profile" / "steps4-6.rank0.pt.trace.json.gz"
    events = trace_events(profiler.trace_path)
    steps = {e["name"]: e for e in events if e.get("name", "").startswith("ProfilerStep#")}
    assert sorted(steps) == ["ProfilerStep#4", "ProfilerStep#5", "ProfilerStep#6"]
    begin = min(e["ts"] for e in steps.values())
    end = max(e["ts"] + e["dur"] for e in steps.values())
    ops = [e for e in events if e.get("cat") == "cpu_op"]
    assert any(e["name"] == "aten::addmm" for e in ops)  # the model's linear layers
    assert all(begin <= e["ts"] and e["ts"] + e["dur"] <= end for e in ops)  # nothing from outside the steps


def test_the_profiler_runs_only_in_its_window(profiled):
    _, _, running = profiled
    assert running.steps == [3, 4, 5, 6]  # on from step 2's end: step 3 warms up, 4 to 6 are recorded


def test_the_table_of_top_operators_is_in_tensorboard(profiled):
    folder, profiler, _ = profiled
    events = EventAccumulator(str(folder), size_guidance={"tensors": 0}).Reload()
    assert "profiler/cuda/text_summary" not in events.Tags()["tensors"]  # on a CPU: the CPU table only
    (table,) = events.Tensors("profiler/cpu/text_summary")
    text = table.tensor_proto.string_val[0].decode()
    assert table.step == 6
    assert f"trace `{profiler.trace_path}`" in text and "ui.perfetto.dev" in text
    assert "Self CPU" in text and "aten::" in text and "# of Calls" in text


def test_a_second_profile_in_the_same_folder_keeps_the_first(profiled):
    folder, profiler, _ = profiled
    again = Profiler(wait=2, warmup=1, active=3, dirpath=folder / "profile")
    trainer_with([again]).fit(DataLoader(tiny_classification_data(64), batch_size=8), epochs=1)
    assert again.trace_path == folder / "profile" / "steps4-6.rank0-2.pt.trace.json.gz"
    assert profiler.trace_path.exists() and again.trace_path.exists()


def test_a_window_past_the_end_of_training_is_refused_before_a_step(tmp_path):
    profiler = Profiler(wait=5, warmup=1, active=5, dirpath=tmp_path)
    trainer = trainer_with([profiler])
    with pytest.raises(TrainerError, match=r"window ends at optimizer step 11 .* this fit ends at step 8: lower"):
        trainer.fit(DataLoader(tiny_classification_data(64), batch_size=8), epochs=1)
    assert trainer.state.global_step == 0 and not list(tmp_path.iterdir())


class Stream(IterableDataset):
    def __iter__(self):
        yield from tiny_classification_data(32)  # 4 batches of 8, and no length to plan with


def test_a_run_that_ends_inside_the_window_writes_what_it_recorded(tmp_path):
    profiler = Profiler(wait=0, warmup=1, active=10, dirpath=tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer_with([profiler]).fit(DataLoader(Stream(), batch_size=8), epochs=1)
    (message,) = [str(w.message) for w in caught if "Profiler" in str(w.message)]
    assert "ended at step 4, inside the window: the trace holds steps 2-4 of 2-11, and what ran after" in message
    names = {e["name"] for e in trace_events(profiler.trace_path) if e.get("name", "").startswith("ProfilerStep#")}
    assert names == {"ProfilerStep#2", "ProfilerStep#3", "ProfilerStep#4", "ProfilerStep#5"}  # 5: the epoch's end


def test_without_a_folder_the_profiler_says_where_to_put_it():
    with pytest.raises(TrainerError, match=r"no folder for the trace: pass Profiler\(dirpath=...\)"):
        trainer_with([Profiler()]).fit(DataLoader(tiny_classification_data(16), batch_size=8), epochs=3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"active": 0}, r"Profiler\(active=0\): give a whole number of steps, at least 1"),
        ({"wait": -1}, r"Profiler\(wait=-1\)"),
        ({"warmup": 1.5}, r"Profiler\(warmup=1.5\)"),
        ({"row_limit": True}, r"Profiler\(row_limit=True\)"),
    ],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(TrainerError, match=message):
        Profiler(**kwargs)


TINY = ["--epochs", "1", "--train-samples", "48", "--val-samples", "16", "--batch-size", "16", "--image-size", "16"]
TINY += ["--no-progress", "--no-inspection"]  # 3 optimizer steps


def test_train_profile_steps_writes_a_trace_into_the_run_folder(tmp_path, capsys):
    assert main(["train", *TINY, "--log-dir", str(tmp_path / "run"), "--profile-steps", "1"]) == 0
    (trace,) = (tmp_path / "run" / "profile").iterdir()
    assert trace.name == "steps3-3.rank0.pt.trace.json.gz"
    assert {e["name"] for e in trace_events(trace) if e.get("name", "").startswith("ProfilerStep#")} == {
        "ProfilerStep#3"
    }
    assert f"profile of steps 3-3 written to {trace}" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ("2", "--profile-steps 2 needs 4 optimizer steps (1 skipped, 1 of warm-up), and this run has 3: lower it"),
        ("-1", "--profile-steps must be 0 (off) or a number of optimizer steps, got -1"),
    ],
)
def test_train_refuses_a_profile_longer_than_the_run(tmp_path, capsys, steps, message):
    assert main(["train", *TINY, "--log-dir", str(tmp_path / "run"), "--profile-steps", steps]) == 2
    assert message in capsys.readouterr().err
