"""Fine-tune a torchvision ResNet-18: first only a new head on a frozen backbone, then the
backbone block by block from the head down, each block at a smaller learning rate.

Run:  python examples/finetune_gradual_unfreeze.py             (about a minute on a CPU)
      python examples/finetune_gradual_unfreeze.py --weights resnet18-f37072fd.pth
      tensorboard --logdir runs/finetune    (SCALARS, "lr": one curve per param group)

Without --weights the backbone starts from random weights, so the first, head-only epoch
learns little: the point here is the mechanics. With a local ImageNet state_dict (any file
saved with torch.save(model.state_dict(), path)) the frozen features are already good.
"""

import argparse

import torch
import torchvision
from torch import nn
from torch.optim.lr_scheduler import OneCycleLR

from callbacks_kit import FreezeUnfreeze, LearningRateScheduler, TensorBoardLogger, Trainer, accuracy
from callbacks_kit.data import ShapesDataset, make_loader
from callbacks_kit.finetune import idx_to_class, load_weights, param_groups, replace_head

parser = argparse.ArgumentParser()
parser.add_argument("--weights", help="local ResNet-18 state_dict (.pth or .safetensors)")
parser.add_argument("--lr", type=float, default=2e-3, help="peak LR of the head")
parser.add_argument("--fast", action="store_true", help="tiny data, for a smoke test")
parser.add_argument("--log-dir", default="runs/finetune")
args = parser.parse_args()
size, n, batch = (32, 64, 16) if args.fast else (64, 1200, 64)

train_set = ShapesDataset(n, size, seed=0)
val_set = ShapesDataset(n // 4, size, seed=1)
train_loader = make_loader(train_set, batch, shuffle=True, workers=0)
val_loader = make_loader(val_set, batch, shuffle=False, workers=0)

# 1. The model; load_weights reads a local file safely and says which keys matched.
torch.manual_seed(0)  # the same initial weights every run (Trainer(seed=) covers data order and dropout)
model = torchvision.models.resnet18(weights=None)
if args.weights:
    print(load_weights(model, args.weights))  # loaded before replace_head: the 1000-class fc matches too
replace_head(model, num_classes=len(ShapesDataset.classes))  # a fresh 6-class fc

# 2. One param group per unfreezing stage, built up front over *all* parameters: frozen
#    ones simply get no gradient, so nothing is rebuilt later and a resumed run has the
#    same groups. Biases and BatchNorm weights get no weight decay.
stem = ("conv1", "bn1", "layer1", "layer2")
groups = param_groups(
    model, {"fc": args.lr, "layer4": args.lr, "layer3": args.lr, stem: args.lr}, no_decay_bias_and_norm=True
)
optimizer = torch.optim.AdamW(groups, weight_decay=0.05)

# 3. Epoch 0 trains the head alone. Then, from the head down: layer4 at epoch 1, layer3 at
#    epoch 2, the stem at epoch 3, each at the head's LR times its factor (discriminative
#    LRs). Frozen BatchNorm layers keep their running statistics.
freezer = FreezeUnfreeze(
    backbone=[*stem, "layer3", "layer4"],
    unfreeze_at={1: "layer4", 2: "layer3", 3: list(stem)},
    lr_factor=[0.5, 0.25, 0.1],
)


# 4. OneCycle per optimizer step. A factory: it gets the prepared optimizer and the exact
#    steps per epoch at fit start. Each group peaks at its own LR, so the factors above
#    hold at every step.
def one_cycle(opt: torch.optim.Optimizer, steps_per_epoch: int) -> OneCycleLR:
    peaks = [group["lr"] for group in opt.param_groups]
    return OneCycleLR(opt, max_lr=peaks, epochs=4, steps_per_epoch=steps_per_epoch, pct_start=0.25)


trainer = Trainer(
    model,
    optimizer,
    nn.CrossEntropyLoss(),
    metrics={"accuracy": accuracy},
    callbacks=[TensorBoardLogger(args.log_dir), freezer, LearningRateScheduler(one_cycle, interval="step")],
    seed=0,
    log_every_n_steps=2,  # dense LR curves
    progress_bar=not args.fast,
)
trainer.fit(train_loader, val_loader, epochs=4)

# 5. Predictions by class name: idx_to_class works on any ImageFolder (the shapes dataset
#    has the same class_to_idx).
names = idx_to_class(val_set)
images, labels = next(iter(val_loader))
with torch.no_grad():
    predicted = trainer.unwrapped_model.eval()(images[:6].to(trainer.device)).argmax(1).tolist()
for truth, guess in zip(labels[:6].tolist(), predicted, strict=True):
    trainer.print(f"true {names[truth]:>8}  predicted {names[guess]}")
trainer.print(
    f"val/accuracy {trainer.state.metrics['val/accuracy']:.3f}; LR curves: tensorboard --logdir {args.log_dir}"
)
