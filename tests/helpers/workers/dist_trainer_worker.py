"""Worker for test_distributed_trainer: run by torchrun in two gloo processes."""

import json
import sys
from pathlib import Path

import torch
from helpers.tiny import tiny_classification_data, tiny_mlp
from torch import nn
from torch.utils.data import DataLoader

from callbacks_kit import Callback, Profiler, TensorBoardLogger, Trainer, accuracy

out = Path(sys.argv[1])


class StopOnRankOne(Callback):
    """Only rank 1 asks to stop: both processes must stop at the same step."""

    def on_train_batch_end(self, trainer: Trainer) -> None:
        if trainer.accelerator.process_index == 1 and trainer.state.global_step == 6:
            trainer.state.should_stop = True


model = tiny_mlp()
trainer = Trainer(
    model,
    torch.optim.SGD(model.parameters(), lr=0.1),
    nn.CrossEntropyLoss(),
    metrics={"accuracy": accuracy},
    # The profiler's folder is the main process's run folder, which rank 1 only learns from it.
    callbacks=[TensorBoardLogger(str(out / "run")), StopOnRankOne(), Profiler(wait=1, warmup=1, active=2)],
    seed=0,
    log_every_n_steps=2,
    progress_bar=True,
)
val_data = tiny_classification_data(31, seed=1)  # 31 samples: an uneven last batch across 2 processes
state = trainer.fit(
    DataLoader(tiny_classification_data(64), batch_size=8, shuffle=True), DataLoader(val_data, batch_size=8), epochs=4
)
results = trainer.evaluate(DataLoader(val_data, batch_size=8))
net = trainer.unwrapped_model.eval()
with torch.no_grad():
    logits = net(val_data.tensors[0])
expected = (logits.argmax(1) == val_data.tensors[1]).float().mean().item()
rank = trainer.accelerator.process_index
(out / f"rank{rank}.json").write_text(
    json.dumps(
        {
            "global_step": state.global_step,
            "epoch": state.epoch,
            "num_processes": trainer.accelerator.num_processes,
            "val_accuracy": results["val/accuracy"],
            "expected_accuracy": expected,
            "first_weight": float(net[0].weight.flatten()[0]),
        }
    )
)
