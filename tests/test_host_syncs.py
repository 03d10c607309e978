"""No host-device syncs on non-logging steps: the loop reads the device only when it logs.

On a CPU nothing waits, so the reads that would make a GPU wait are counted instead
(`HostSyncCounter` in benchmarks/sync_counter.py, which the benchmark also reports).
"""

from pathlib import Path

import pytest
import torch
from helpers.tiny import tiny_classification_data, tiny_mlp
from torch import nn
from torch.utils.data import DataLoader

from benchmarks.sync_counter import HostSyncCounter, syncs_per_step
from callbacks_kit import EMA, Callback, ProgressBar, TensorBoardLogger, TerminateOnNaN, Trainer, accuracy
from callbacks_kit.cli import build_parser, job_callbacks
from callbacks_kit.data import ShapesDataset
from callbacks_kit.inspection.event_report import inspect_run


def make_trainer(callbacks=(), **kwargs) -> Trainer:
    model = tiny_mlp()
    return Trainer(
        model,
        torch.optim.AdamW(model.parameters(), lr=1e-2),
        nn.CrossEntropyLoss(),
        callbacks=list(callbacks),
        seed=0,
        log_every_n_steps=4,
        **kwargs,
    )


def loader() -> DataLoader:
    return DataLoader(tiny_classification_data(96), batch_size=8, shuffle=True)  # 12 steps per epoch


def split(steps):
    quiet = [events for is_log, events in steps if not is_log]
    logged = [events for is_log, events in steps if is_log]
    return quiet, logged


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"tensorboard": True},
        {"terminate_on_nan": True},
        {"gradient_accumulation_steps": 2, "max_grad_norm": 1.0},
        {"mixed_precision": "bf16", "cpu": True},
        {"ema": True},
    ],
    ids=["default-callbacks", "tensorboard-logger", "terminate-on-nan", "accumulation-and-clipping", "bf16", "ema"],
)
def test_non_logging_steps_read_nothing_from_the_device(tmp_path: Path, options: dict):
    options = dict(options)
    callbacks = [TensorBoardLogger(str(tmp_path))] if options.pop("tensorboard", False) else []
    callbacks += [TerminateOnNaN()] if options.pop("terminate_on_nan", False) else []
    callbacks += [EMA(0.9)] if options.pop("ema", False) else []
    steps = syncs_per_step(make_trainer(callbacks, **options), loader(), epochs=2)
    quiet, logged = split(steps)
    assert len(quiet) >= 8 and logged
    assert quiet == [[]] * len(quiet), sorted({e for events in quiet for e in events})
    # The one read of a log step is the loop's (TrainLog): the counter does see the loss going to the host.
    assert all(any("callbacks_kit/train_log.py" in e for e in events) for events in logged), logged


def test_the_main_jobs_full_default_set_reads_nothing_on_non_logging_steps(tmp_path: Path):
    """Every callback `callbacks-kit train` adds by default, built by the CLI's own option functions.

    LayerStats samples every 3rd step (steps 3 and 9 do not log) and BatchGrid copies step 1:
    both keep what they took on the device until the next log step.
    """
    args = build_parser().parse_args(["train", "--epochs", "2", "--layer-stats-every", "3"])
    classes = list(ShapesDataset.classes)
    callbacks = [TensorBoardLogger(str(tmp_path), hparams={"model": "cnn"}), ProgressBar()]
    callbacks += job_callbacks.inspection_callbacks(args, classes)
    callbacks += job_callbacks.error_analysis_callbacks(args, classes)
    callbacks += job_callbacks.training_view_callbacks(args, classes)
    callbacks += job_callbacks.finetune_callbacks(args, steps_per_epoch=12)
    callbacks += job_callbacks.checkpoint_callbacks(args, str(tmp_path))
    kinds = {type(c).__name__ for c in callbacks}
    assert {
        "LayerStats",
        "BatchGrid",
        "WeightHistograms",
        "GradCAM",
        "ModelCheckpoint",
        "LearningRateScheduler",
    } <= kinds
    assert {"TopLosses", "ClassReport"} <= kinds
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, len(classes)),
    )  # fmt: skip
    trainer = Trainer(
        model,
        torch.optim.AdamW(model.parameters(), lr=1e-3),
        nn.CrossEntropyLoss(),
        metrics={"accuracy": accuracy},
        callbacks=callbacks,
        seed=0,
        log_every_n_steps=4,
    )
    train = DataLoader(ShapesDataset(96, 16, seed=0), batch_size=8, shuffle=True)  # 12 steps per epoch
    val = DataLoader(ShapesDataset(16, 16, seed=1), batch_size=8)
    steps = syncs_per_step(trainer, train, epochs=2, val_loader=val)
    quiet, logged = split(steps)
    assert len(quiet) == 18 and len(logged) == 6
    assert quiet == [[]] * len(quiet), sorted({e for events in quiet for e in events})
    # The views did take their samples on quiet steps, and wrote them later.
    runs = inspect_run(tmp_path)["runs"]
    report = runs["."]
    assert {"per_layer/grad_norm/0", "per_layer/act_zeros/2", "optimisation/grad_norm"} <= set(report["scalars"])
    assert "loss/step" in runs["train"]["scalars"]
    sampled = report["scalars"]["per_layer/grad_norm/0"]
    assert (sampled["count"], sampled["first_step"], sampled["last_step"]) == (8, 3, 24)
    assert "train_batch" in report["images"]


def test_a_sync_in_a_callback_is_caught_where_it_happens():
    class ReadsTheLoss(Callback):
        shown = ""

        def on_train_batch_end(self, trainer: Trainer) -> None:
            self.shown = f"{trainer.last_loss:.3f}"  # formatting a tensor reads it: a sync on a GPU

    quiet, _ = split(syncs_per_step(make_trainer([ReadsTheLoss()]), loader()))
    assert quiet and all(len(events) == 1 for events in quiet)
    assert {events[0].rsplit(":", 1)[0] for events in quiet} == {"__format__ at tests/test_host_syncs.py"}


def test_each_kind_of_read_is_counted_and_torch_internals_are_not():
    x, scalar = torch.ones(3), torch.tensor(2.0)
    with HostSyncCounter() as counter:
        scalar.item(), x.tolist(), x.cpu(), x.numpy(), float(scalar), int(scalar), bool(scalar), f"{scalar}"
        x.nonzero()
        [0, 1, 2][torch.tensor(1)]
        optimizer = torch.optim.Adam([nn.Parameter(torch.ones(2))])
        optimizer.param_groups[0]["params"][0].grad = torch.ones(2)
        optimizer.step()  # Adam reads its CPU step counter inside torch: not a sync
        x + x  # arithmetic stays on the device
    kinds = [event.split(" at ")[0] for event in counter.events]
    assert kinds == [
        "item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__", "__format__", "nonzero", "__index__"
    ]  # fmt: skip
