"""Worker for test_metric_objects: torchmetrics objects in `metrics=`, TopLosses, ClassReport; 1 or 2 processes."""

import json
import sys
from pathlib import Path

import torch
from helpers.tiny import tiny_classification_data, tiny_mlp
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from callbacks_kit import ClassReport, TopLosses, Trainer, accuracy


class SampleCount(Metric):
    """Samples seen: 31 only if each is counted once (no padding, no second sum by a sync)."""

    def __init__(self) -> None:
        super().__init__()
        self.add_state("n", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        self.n += targets.numel()

    def compute(self) -> torch.Tensor:
        return self.n


out = Path(sys.argv[1])
model = tiny_mlp()
trainer = Trainer(
    model,
    torch.optim.SGD(model.parameters(), lr=0.1),
    nn.CrossEntropyLoss(),
    metrics={
        "accuracy": accuracy,
        "tm_accuracy": MulticlassAccuracy(num_classes=3, average="micro"),
        "f1": MulticlassF1Score(num_classes=3, average="macro"),
        "samples": SampleCount(),
    },
    callbacks=[top := TopLosses(k=5), report := ClassReport()],
    seed=0,
    progress_bar=False,
)
val_data = tiny_classification_data(31, seed=1)  # 31 samples in batches of 8: uneven across 2 processes
trainer.fit(DataLoader(tiny_classification_data(64), batch_size=8, shuffle=True), DataLoader(val_data, batch_size=8))
results = trainer.evaluate(DataLoader(val_data, batch_size=8))
with torch.no_grad():
    logits = trainer.unwrapped_model.eval()(val_data.tensors[0])
# The same metrics over the whole set at once, in one call, on this process alone.
whole_f1 = MulticlassF1Score(num_classes=3, average="macro")(logits, val_data.tensors[1])
whole_accuracy = MulticlassAccuracy(num_classes=3, average="micro")(logits, val_data.tensors[1])
rank = trainer.accelerator.process_index
(out / f"rank{rank}.json").write_text(
    json.dumps(
        {
            "num_processes": trainer.accelerator.num_processes,
            "results": results,
            "whole_f1": float(whole_f1),
            "whole_accuracy": float(whole_accuracy),
            "order": list(results),
            "whole_losses": nn.functional.cross_entropy(logits, val_data.tensors[1], reduction="none").tolist(),
            "top_positions": top.positions.tolist() if top.positions is not None else None,
            "top_losses": top.losses.tolist() if top.losses is not None else None,
            "support": report.stats.support if report.stats is not None else None,
            "f1": report.stats.f1 if report.stats is not None else None,
        }
    )
)
