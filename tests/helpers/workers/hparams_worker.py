"""A run that pauses at chosen points so a test can read it live, then kill it with SIGKILL.

    python hparams_worker.py LOG_DIR CONTROL_DIR

Writes `CONTROL_DIR/started` after its first step and waits there until `CONTROL_DIR/go`
exists; writes `CONTROL_DIR/epoch1` at the end of its second epoch and waits for the kill.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from callbacks_kit import Callback, Order, TensorBoardLogger, Trainer, accuracy
from callbacks_kit.data import ShapesDataset


class Pause(Callback):
    """Marks where the run is and waits for the test."""

    order = Order.EXIT  # after the logger has written and flushed

    def __init__(self, control: Path) -> None:
        self.control = control

    def on_train_batch_end(self, trainer: Trainer) -> None:
        if trainer.state.global_step == 1:
            (self.control / "started").touch()
            while not (self.control / "go").exists():
                time.sleep(0.05)

    def on_epoch_end(self, trainer: Trainer) -> None:
        if trainer.state.epoch == 1:
            (self.control / "epoch1").touch()
            time.sleep(600)  # killed here


def main() -> None:
    log_dir, control = sys.argv[1], Path(sys.argv[2])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 6))
    logger = TensorBoardLogger(log_dir, flush_secs=3600, graph=False, summary=False, hparams={"note": "killed"})
    trainer = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.05),
        nn.CrossEntropyLoss(),
        metrics={"accuracy": accuracy},
        callbacks=[logger, Pause(control)],
        log_every_n_steps=2,
        progress_bar=False,
    )
    train = DataLoader(ShapesDataset(32, 16, seed=0), batch_size=8, shuffle=True)
    trainer.fit(train, DataLoader(ShapesDataset(16, 16, seed=1), batch_size=8), epochs=5)


if __name__ == "__main__":
    main()
