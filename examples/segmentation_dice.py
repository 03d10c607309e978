"""Segment the built-in shapes with a small U-Net, composed from the package's segmentation pieces.

Run:  python examples/segmentation_dice.py                   (cross-entropy + Dice, 7 classes)
      python examples/segmentation_dice.py --loss bce-dice   (one-vs-rest BCE + Dice)
      tensorboard --logdir runs/segmentation    (SCALARS: val/mean_iou, val/iou/<class>; IMAGES: the
                                                 overlays, the worst images, the pixel confusion matrix;
                                                 TEXT: the per-class IoU/Dice report)

About a minute on a CPU; --fast runs a few seconds.
"""

import argparse

import torch
from torch import nn

from callbacks_kit import (
    LearningRateScheduler,
    ModelCheckpoint,
    PixelConfusionMatrix,
    SegmentationOverlays,
    SegmentationReport,
    TensorBoardLogger,
    Trainer,
    WorstSegmentations,
)
from callbacks_kit.data import ShapesDataset, make_loader
from callbacks_kit.losses import SEGMENTATION_LOSSES, SegmentationLoss
from callbacks_kit.segmentation_metrics import SegmentationMetrics

parser = argparse.ArgumentParser()
parser.add_argument("--loss", choices=SEGMENTATION_LOSSES, default="ce+dice")
parser.add_argument("--epochs", type=int, default=4)
parser.add_argument("--fast", action="store_true", help="tiny data, for a smoke test")
parser.add_argument("--log-dir", default=None, help="default runs/segmentation/<loss>")
args = parser.parse_args()
log_dir = args.log_dir or f"runs/segmentation/{args.loss}"
size, n, epochs = (32, 48, 1) if args.fast else (64, 800, args.epochs)

# 1. Masks come with the dataset: (H, W) longs, 0 for background and class + 1 on each shape;
#    its `classes` name every mask value, background first.
train_set = ShapesDataset(n, size, seed=0, task="segmentation")
val_set = ShapesDataset(n // 4, size, seed=1, task="segmentation")
names = list(val_set.classes)
train_loader = make_loader(train_set, 16, shuffle=True, workers=0)
val_loader = make_loader(val_set, 32, shuffle=False, workers=0)


# 2. A small U-Net: two downsampling stages, and skip connections that bring back detail.
def block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
        nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
    )  # fmt: skip


class UNet(nn.Module):
    def __init__(self, classes: int) -> None:
        super().__init__()
        self.enc1, self.enc2, self.mid = block(3, 16), block(16, 32), block(32, 64)
        self.up2, self.dec2 = nn.ConvTranspose2d(64, 32, 2, stride=2), block(64, 32)
        self.up1, self.dec1 = nn.ConvTranspose2d(32, 16, 2, stride=2), block(32, 16)
        self.out = nn.Conv2d(16, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(nn.functional.max_pool2d(e1, 2))
        m = self.mid(nn.functional.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([self.up2(m), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
        return self.out(d1)  # logits (N, classes, H, W); torchvision's {"out": logits} works as well


# 3. The loss, by name, from callbacks_kit.losses: every one leaves out the pixels whose mask
#    value is the ignore index (255 by default; these masks have none).
loss_fn = SegmentationLoss(args.loss)

# 4. The metrics, from pixel counts kept on the device: val/mean_iou, val/pixel_accuracy and,
#    per class, val/iou/<class> and val/dice/<class> (NaN for a class absent from both the truth
#    and the predictions, and left out of the mean).
metrics = SegmentationMetrics(class_names=names).metrics()

# 5. The views, written at each validation: fixed images that cover the classes as
#    image | truth | prediction | errors, the worst images by IoU, the pixel confusion matrix,
#    and a per-class IoU/Dice table.
views = [
    SegmentationOverlays(num_images=6, class_names=names),
    WorstSegmentations(k=6, class_names=names),
    PixelConfusionMatrix(class_names=names),
    SegmentationReport(class_names=names),
]

torch.manual_seed(0)
model = UNet(len(names))
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
trainer = Trainer(
    model,
    optimizer,
    loss_fn,
    metrics=metrics,
    callbacks=[
        TensorBoardLogger(log_dir, summary=False),
        # Cosine decay per optimizer step after 20 steps of linear warmup.
        LearningRateScheduler(
            lambda opt, steps_per_epoch: torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * steps_per_epoch),
            interval="step",
            warmup=20,
        ),
        *views,
        ModelCheckpoint(f"{log_dir}/checkpoints", monitor="val/mean_iou", mode="max"),
    ],
    seed=0,
    log_every_n_steps=5,
    progress_bar=not args.fast,
)
trainer.fit(train_loader, val_loader, epochs=epochs)
trainer.print(f"{args.loss}: val/mean_iou {trainer.state.metrics['val/mean_iou']:.3f}; tensorboard --logdir {log_dir}")
