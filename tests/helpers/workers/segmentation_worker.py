"""Worker for test_segmentation_metrics: the segmentation metrics and views in 1 or 2 processes.

The model does not change during its one epoch (LR 0, BatchNorm momentum 0), so every process
count validates the same weights. Writes `rank<r>.json`: the Trainer's validation metrics
(gathered batches), the metrics of the whole set counted at once on this process, the
standalone metrics where each process counted its own share (summed at compute), and the
views' numbers.
"""

import json
import sys
import tempfile
from pathlib import Path

import torch
from helpers.tiny import TinySegmenter
from torch import nn
from torch.utils.data import DataLoader, Subset

from callbacks_kit import TensorBoardLogger, Trainer
from callbacks_kit.callbacks import PixelConfusionMatrix, SegmentationReport, WorstSegmentations
from callbacks_kit.data import ShapesDataset
from callbacks_kit.losses import SegmentationLoss
from callbacks_kit.segmentation_metrics import SegmentationMetrics


class WithAbsentClass(nn.Module):
    """The tiny segmenter plus an eighth class that no mask holds and the model never predicts."""

    def __init__(self) -> None:
        super().__init__()
        self.net = TinySegmenter(7)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.net(images)["out"]
        return {"out": torch.cat([logits, torch.full_like(logits[:, :1], -100.0)], dim=1)}


out = Path(sys.argv[1])
names = [*ShapesDataset(1, 16, task="segmentation").classes, "absent"]
model = WithAbsentClass()
for layer in model.modules():
    if isinstance(layer, nn.BatchNorm2d):
        layer.momentum = 0.0  # running statistics stay as they are: the weights validated are the same everywhere
val_data = ShapesDataset(31, 16, seed=1, task="segmentation")  # 31 samples in batches of 8: uneven across 2 processes
report, worst, confusion = SegmentationReport(class_names=names), WorstSegmentations(k=5), PixelConfusionMatrix()
with tempfile.TemporaryDirectory() as log_dir:
    trainer = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.0),
        SegmentationLoss("ce+dice"),
        metrics=SegmentationMetrics(class_names=names).metrics(),
        callbacks=[TensorBoardLogger(log_dir, graph=False, summary=False), report, worst, confusion],
        seed=0,
        progress_bar=False,
    )
    trainer.fit(DataLoader(ShapesDataset(32, 16, task="segmentation"), 8, shuffle=True), DataLoader(val_data, 8))
    results = trainer.evaluate(DataLoader(val_data, batch_size=8))
rank, world = trainer.accelerator.process_index, trainer.accelerator.num_processes
net = trainer.unwrapped_model.eval()
with torch.no_grad():
    whole = SegmentationMetrics(class_names=names)
    images, masks = next(iter(DataLoader(val_data, batch_size=31)))
    whole.update(net(images), masks)
    whole_scores = whole.scores(sync=False)
    mine = SegmentationMetrics(class_names=names)  # this process's share, summed over processes by compute()
    for images, masks in DataLoader(Subset(val_data, range(rank, 31, world)), batch_size=4):
        mine.update(net(images), masks)
    reduced = mine.compute().named(names)
(out / f"rank{rank}.json").write_text(
    json.dumps(
        {
            "num_processes": world,
            "val": {key: value for key, value in results.items() if key != "val/loss"},
            "reduced": reduced,
            "whole": whole_scores.named(names),
            "whole_support": whole_scores.support,
            "report_support": report.scores.support if report.scores is not None else None,
            "worst": worst.positions.tolist() if worst.positions is not None else None,
            "confusion": confusion.matrix.tolist() if confusion.matrix is not None else None,
        }
    )
)
