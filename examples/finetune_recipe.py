"""The modern fine-tuning recipe on a ResNet-18: an LR range test first, then training with
augmentation, MixUp/CutMix, label smoothing, an EMA of the weights and gradual unfreezing.

Run:  python examples/finetune_recipe.py              (a few minutes on a CPU)
      python examples/finetune_recipe.py --fast       (tiny data, about a minute)
      tensorboard --logdir runs/recipe    (IMAGES: lr_find/curve; SCALARS: val/* next to val_ema/*;
                                           TEXT: lr_find/suggestion)

The same recipe from the command line:
      callbacks-kit lr-find --freeze-backbone
      callbacks-kit train --lr auto --ema 0.999 --mixup 0.2 --cutmix 1.0 --label-smoothing 0.1 \
          --augment trivialaugment --freeze-backbone --unfreeze-at 2
"""

import argparse

import torch
import torchvision
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from torchvision.transforms import v2

from callbacks_kit import (
    EMA,
    FreezeUnfreeze,
    LRFinder,
    MixUpCutMix,
    ModelCheckpoint,
    TensorBoardLogger,
    Trainer,
    accuracy,
)
from callbacks_kit.data import ShapesDataset, augmentation, make_loader
from callbacks_kit.finetune import param_groups, replace_head

parser = argparse.ArgumentParser()
parser.add_argument("--fast", action="store_true", help="tiny data and a short sweep, for a smoke test")
parser.add_argument("--log-dir", default="runs/recipe")
args = parser.parse_args()
size, n, batch, epochs, sweep = (32, 128, 16, 3, 24) if args.fast else (64, 1200, 64, 6, 80)

# 1. Data: TrivialAugment (after a random crop and flip) on the training images only; the
#    shapes dataset applies it to the float image before normalising.
train_set = ShapesDataset(n, size, seed=0, transform=v2.Compose(augmentation(size, "trivialaugment")))
val_set = ShapesDataset(n // 4, size, seed=1)
train_loader = make_loader(train_set, batch, shuffle=True, workers=0, drop_last=True)
val_loader = make_loader(val_set, batch, shuffle=False, workers=0)

# 2. A ResNet-18 with a fresh 6-class head (pass pretrained weights here in real use), one
#    param group per block so the backbone can get smaller LRs when it is unfrozen.
torch.manual_seed(0)
model = torchvision.models.resnet18(weights=None)
replace_head(model, num_classes=len(ShapesDataset.classes))
backbone = ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4"]
groups = param_groups(model, {"fc": 1e-3, "layer4": 1e-3, ("conv1", "bn1", "layer1", "layer2", "layer3"): 1e-3})
optimizer = torch.optim.AdamW(groups, weight_decay=0.05)

# 3. The recipe's callbacks. MixUp/CutMix replaces each training batch (soft targets);
#    train/accuracy is measured against the hard labels. The EMA is validated as val_ema/*,
#    and the checkpoint keeps the EMA weights as the best.
ema = EMA(decay=0.99 if args.fast else 0.998)  # few steps here: a shorter memory than the usual 0.999
callbacks = [
    TensorBoardLogger(args.log_dir),
    FreezeUnfreeze(backbone=backbone, unfreeze_at={1: "layer4", 2: backbone[:-1]}, lr_factor=[0.3, 0.1]),
    MixUpCutMix(mixup_alpha=0.2, cutmix_alpha=1.0),
    ema,
    ModelCheckpoint(f"{args.log_dir}/checkpoints", monitor="val_ema/accuracy", mode="max"),
]
trainer = Trainer(
    model,
    optimizer,
    nn.CrossEntropyLoss(label_smoothing=0.1),  # takes MixUp's soft targets too
    metrics={"accuracy": accuracy},
    callbacks=callbacks,
    seed=0,
    log_every_n_steps=2,
    progress_bar=not args.fast,
)

# 4. The LR range test over the whole network, as it trains from the third epoch on. It
#    restores the weights, optimizer and RNG exactly, so training below is as if it never
#    ran. (To sweep the head alone, as the first epoch trains, freeze the backbone around
#    the test with callbacks_kit.finetune.freeze/unfreeze: `callbacks-kit lr-find --freeze-backbone`.)
result = LRFinder(min_lr=1e-5, max_lr=3.0, steps=sweep).run(trainer, train_loader)
trainer.print(result.summary())
if trainer.is_main_process:
    with SummaryWriter(f"{args.log_dir}/lr_find") as writer:
        result.log(writer)  # the curve as an image, the scalars, the suggestion as text
lr = result.suggestion or 1e-3  # a curve without a minimum gives no suggestion: keep the default
for group in trainer.optimizer.param_groups:  # every group keeps its ratio to the head
    group["lr"] = lr * group["lr"] / result.base_lr

# 5. Train. The epoch line shows val/* and val_ema/* side by side.
trainer.fit(train_loader, val_loader, epochs=epochs)
metrics = trainer.state.metrics
trainer.print(
    f"trained with LR {lr:.3g}: val/accuracy {metrics['val/accuracy']:.3f}, "
    f"val_ema/accuracy {metrics['val_ema/accuracy']:.3f}; tensorboard --logdir {args.log_dir}"
)
