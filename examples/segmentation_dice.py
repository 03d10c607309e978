"""Segment the built-in shapes with the package's U-Net, composed from its segmentation pieces.

Run:  python examples/segmentation_dice.py                   (cross-entropy + Dice, 7 classes)
      python examples/segmentation_dice.py --loss bce-dice   (one-vs-rest BCE + Dice)
      tensorboard --logdir runs/segmentation    (SCALARS: val/mean_iou, val/iou/<class>; IMAGES: the
                                                 overlays, the worst images, the pixel confusion matrix;
                                                 TEXT: the per-class IoU/Dice report)

About a minute on a CPU; --fast runs a few seconds. `callbacks-kit train --task segmentation` is
the same job with more images and epochs.
"""

import argparse

import torch

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
from callbacks_kit.finetune import UNet
from callbacks_kit.losses import SEGMENTATION_LOSSES, SegmentationLoss
from callbacks_kit.segmentation_metrics import SegmentationMetrics

parser = argparse.ArgumentParser()
parser.add_argument("--loss", choices=SEGMENTATION_LOSSES, default="ce+dice")
parser.add_argument("--epochs", type=int, default=5)
parser.add_argument("--fast", action="store_true", help="tiny data, for a smoke test")
parser.add_argument("--log-dir", default=None, help="default runs/segmentation/<loss>")
args = parser.parse_args()
log_dir = args.log_dir or f"runs/segmentation/{args.loss}"
size, n, epochs = (32, 48, 1) if args.fast else (64, 2000, args.epochs)

# 1. Masks come with the dataset: (H, W) longs, 0 for background and class + 1 on each shape;
#    its `classes` name every mask value, background first.
train_set = ShapesDataset(n, size, seed=0, task="segmentation")
val_set = ShapesDataset(n // 4, size, seed=1, task="segmentation")
names = list(val_set.classes)
# Batches of 32: more optimizer steps per epoch than 64, which is what a model from scratch needs.
train_loader = make_loader(train_set, 32, shuffle=True, workers=0)
val_loader = make_loader(val_set, 32, shuffle=False, workers=0)


# 2. The package's U-Net (`callbacks_kit.finetune.UNet`): a strided stem, three downsamplings
#    and skip connections that bring back detail; its output is the logits (N, classes, H, W).
#    Any model giving those (or torchvision's {"out": logits}) works with the pieces below.
torch.manual_seed(0)
model = UNet(len(names))

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

optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.05)
trainer = Trainer(
    model,
    optimizer,
    loss_fn,
    metrics=metrics,
    callbacks=[
        TensorBoardLogger(log_dir, summary=False),
        # OneCycle per optimizer step: warm up to 5e-3, then anneal to almost 0 by the last step.
        LearningRateScheduler(
            lambda opt, steps_per_epoch: torch.optim.lr_scheduler.OneCycleLR(opt, 5e-3, epochs * steps_per_epoch),
            interval="step",
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
