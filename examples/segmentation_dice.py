"""Segment the built-in shapes with a small encoder-decoder, trained with Dice or BCE-Dice.

Run:  python examples/segmentation_dice.py --loss bce-dice   (binary: shape vs background)
      python examples/segmentation_dice.py --loss dice       (7 classes: background + 6 shapes)
      tensorboard --logdir runs/segmentation    (val/iou per run; IMAGES: image | truth | prediction)

About a minute each on a CPU; --fast runs a few seconds.
"""

import argparse

import torch
from torch import nn

from callbacks_kit import Callback, LearningRateScheduler, TensorBoardLogger, Trainer
from callbacks_kit.data import ShapesDataset, denormalize, make_loader
from callbacks_kit.losses import BCEDiceLoss, DiceLoss

parser = argparse.ArgumentParser()
parser.add_argument("--loss", choices=["bce-dice", "dice"], default="bce-dice")
parser.add_argument("--epochs", type=int, default=4)
parser.add_argument("--fast", action="store_true", help="tiny data, for a smoke test")
parser.add_argument("--log-dir", default=None, help="default runs/segmentation/<loss>")
args = parser.parse_args()
log_dir = args.log_dir or f"runs/segmentation/{args.loss}"
size, n, epochs = (32, 48, 1) if args.fast else (64, 800, args.epochs)
binary = args.loss == "bce-dice"
classes = 1 if binary else len(ShapesDataset.classes) + 1  # one logit, or background + 6 shapes

# 1. Masks come with the dataset: (H, W) longs, 0 for background and class + 1 on each shape.
train_loader = make_loader(ShapesDataset(n, size, seed=0, task="segmentation"), 16, shuffle=True, workers=0)
val_loader = make_loader(ShapesDataset(n // 4, size, seed=1, task="segmentation"), 32, shuffle=False, workers=0)


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
        return self.out(d1)  # logits (N, classes, H, W): the losses apply sigmoid/softmax


# 3. The loss. BCE-Dice on one logit per pixel: the target is "any shape" (mask > 0).
#    Multi-class Dice on 7 logits: the target is the mask itself (class indices).
if binary:
    bce_dice = BCEDiceLoss()

    def loss_fn(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return bce_dice(logits, (mask > 0).float().unsqueeze(1))
else:
    loss_fn = DiceLoss()


def predict(logits: torch.Tensor) -> torch.Tensor:
    return (logits[:, 0] > 0).long() if binary else logits.argmax(1)


# 4. A metric is any (outputs, targets) -> scalar tensor: mean IoU over the classes present.
def iou(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    truth = (mask > 0).long() if binary else mask
    pred = predict(logits)
    scores = []
    for c in range(1, max(classes, 2)):  # shapes only: background would flatter the score
        inter = ((pred == c) & (truth == c)).sum()
        union = ((pred == c) | (truth == c)).sum()
        if union > 0:
            scores.append(inter / union)
    return torch.stack(scores).mean() if scores else torch.ones((), device=logits.device)


# 5. A few validation images next to their true and predicted masks, in TensorBoard after
#    each epoch: a callback writes through the trainer's writer (None on other processes).
class ShowPredictions(Callback):
    def __init__(self, images: torch.Tensor, masks: torch.Tensor) -> None:
        self.images, self.truth = images, (masks > 0).long() if binary else masks
        self.palette = torch.rand(8, 3, generator=torch.Generator().manual_seed(3))
        self.palette[0] = 0  # background black

    def on_epoch_end(self, trainer: Trainer) -> None:
        if trainer.tb_writer is None:
            return
        model = trainer.unwrapped_model
        model.eval()  # BatchNorm with its running statistics, as at validation
        with torch.no_grad():
            predicted = predict(model(self.images.to(trainer.device))).cpu()
        model.train()
        colour = [self.palette[m].permute(0, 3, 1, 2) for m in (self.truth, predicted)]
        grid = torch.cat([denormalize(self.images), *colour], dim=3)  # image | truth | prediction
        trainer.tb_writer.add_images("segmentation/image_truth_prediction", grid, trainer.state.global_step)


torch.manual_seed(0)
model = UNet(classes)
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
images, masks = next(iter(val_loader))
trainer = Trainer(
    model,
    optimizer,
    loss_fn,
    metrics={"iou": iou},
    callbacks=[
        TensorBoardLogger(log_dir, summary=False),
        # Cosine decay per optimizer step after 20 steps of linear warmup.
        LearningRateScheduler(
            lambda opt, steps_per_epoch: torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * steps_per_epoch),
            interval="step",
            warmup=20,
        ),
        ShowPredictions(images[:4], masks[:4]),
    ],
    seed=0,
    log_every_n_steps=5,
    progress_bar=not args.fast,
)
trainer.fit(train_loader, val_loader, epochs=epochs)
trainer.print(f"{args.loss}: val/iou {trainer.state.metrics['val/iou']:.3f}; tensorboard --logdir {log_dir}")
