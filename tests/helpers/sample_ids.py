"""Training runs whose batches say which samples they hold: resuming at another world size or batch size.

The dataset's inputs carry each sample's id in their last column, which the model ignores;
`RecordIds` writes down, per optimizer step and process, the ids trained and the LR used.
Run in the test process (one process) and by `workers/sample_order_worker.py` (torchrun).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import StepLR
from torch.utils.data import DataLoader, TensorDataset

from callbacks_kit import Callback, LearningRateScheduler, ModelCheckpoint, Trainer

SAMPLES = 96  # a whole number of steps for 32 and 48 samples per step
LR, GAMMA, EVERY = 0.05, 0.5, 2  # StepLR: the LR halves every 2 optimizer steps


def id_dataset() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(SAMPLES, 8, generator=g)
    labels = (x @ torch.randn(8, 3, generator=g)).argmax(1)
    ids = torch.arange(SAMPLES, dtype=torch.float32).unsqueeze(1)
    return TensorDataset(torch.cat([x, ids], dim=1), labels)


class WithoutId(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :-1]


class RecordIds(Callback):
    """One row per batch: epoch, optimizer step, this process's sample ids and the LR they trained with."""

    order = -50  # before the LR schedule steps (SCHEDULE, 0)

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.lr = 0.0

    def on_train_batch_start(self, trainer: Trainer) -> None:
        self.lr = trainer.optimizer.param_groups[0]["lr"]

    def on_train_batch_end(self, trainer: Trainer) -> None:
        ids = trainer.last_inputs[:, -1].long().tolist()
        state = trainer.state
        self.rows.append({"epoch": state.epoch, "step": state.global_step, "ids": ids, "lr": self.lr})


class CopyAt(Callback):
    """Copies the checkpoint committed at each of `steps` to `<dest>/step<N>` (main process)."""

    order = 300  # after ModelCheckpoint (200) saved, synchronously, at the same step

    def __init__(self, dest: Path, steps: tuple[int, ...]) -> None:
        self.dest, self.steps = dest, steps

    def on_train_batch_end(self, trainer: Trainer) -> None:
        checkpoint = trainer.callbacks.find(ModelCheckpoint)[0]
        if trainer.is_main_process and trainer.state.global_step in self.steps and checkpoint.last_path:
            shutil.copytree(checkpoint.last_path, self.dest / f"step{trainer.state.global_step}")


class StopAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: Trainer) -> None:
        if trainer.state.global_step == self.step:
            trainer.state.should_stop = True


def run(
    batch_size: int,
    directory: Path,
    *,
    epochs: int = 3,
    resume: str | None = None,
    stop_at: int | None = None,
    copy_to: Path | None = None,
    copy_at: tuple[int, ...] = (),
    extra: list[Callback] | None = None,
    checkpoint: ModelCheckpoint | None = None,
) -> tuple[Trainer, list[dict[str, Any]]]:
    """Train (or resume) with `batch_size` samples per process; by default a checkpoint after every step.

    Returns the trainer and the rows `RecordIds` wrote down in this process.
    """
    torch.manual_seed(0)
    model = nn.Sequential(WithoutId(), nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))
    record = RecordIds()
    callbacks: list[Callback] = [
        record,
        LearningRateScheduler(lambda opt: StepLR(opt, EVERY, GAMMA), interval="step"),
        checkpoint or ModelCheckpoint(directory, every_n_steps=1, async_save=False),
        *(extra or []),
    ]
    if stop_at is not None:
        callbacks.append(StopAt(stop_at))
    if copy_to is not None:
        callbacks.append(CopyAt(copy_to, copy_at))
    trainer = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=LR),
        nn.CrossEntropyLoss(),
        callbacks=callbacks,
        seed=0,
        log_every_n_steps=2,
        progress_bar=False,
    )
    loader = DataLoader(id_dataset(), batch_size=batch_size, shuffle=True)
    trainer.fit(loader, epochs=epochs, resume_from=resume)
    return trainer, record.rows


def write_rows(rows: list[dict[str, Any]], path: Path) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def read_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]
