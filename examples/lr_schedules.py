"""Learning-rate schedules with the `LearningRateScheduler` callback, their curves overlaid in TensorBoard.

Four ways to drive the learning rate, each trained as its own run on the same data from
the same initial weights:

    onecycle  OneCycleLR, stepped after every optimizer step (warmup, then a cosine fall)
    step      MultiStepLR, stepped after every epoch (piecewise constant, drops at milestones)
    plateau   ReduceLROnPlateau, read val/loss after every epoch (drops when it stops improving)
    custom    your own function of the step: linear warmup, then cosine decay, no scheduler class

Run:  python examples/lr_schedules.py                      (all four, about a minute on a CPU)
      python examples/lr_schedules.py --schedule plateau   (just one)
Then: tensorboard --logdir runs/lr_schedules
      Each schedule is a run (a subfolder), so the SCALARS tab draws the four `lr/group0`
      curves in one chart, next to their `train/loss` and `val/loss`.
"""

import argparse
import math

import torch
from torch import nn
from torch.optim.lr_scheduler import MultiStepLR, OneCycleLR, ReduceLROnPlateau

from callbacks_kit import LearningRateScheduler, TensorBoardLogger, Trainer, accuracy
from callbacks_kit.data import ShapesDataset, make_loader

SCHEDULES = ("onecycle", "step", "plateau", "custom")

parser = argparse.ArgumentParser()
parser.add_argument("--schedule", choices=[*SCHEDULES, "all"], default="all")
parser.add_argument("--epochs", type=int, default=None, help="default 8 (4 with --fast)")
parser.add_argument("--lr", type=float, default=0.05, help="base (or peak) learning rate")
parser.add_argument("--fast", action="store_true", help="tiny data, for a smoke test")
parser.add_argument("--log-dir", default="runs/lr_schedules", help="one subfolder per schedule")
args = parser.parse_args()
epochs = args.epochs or (4 if args.fast else 8)
size, n = (32, 128) if args.fast else (32, 1024)

# The built-in shapes: generated from a seed, no download. Every run sees the same batches.
train_loader = make_loader(ShapesDataset(n, size, seed=0), 32, shuffle=True, workers=0)
val_loader = make_loader(ShapesDataset(n // 4, size, seed=1), 64, shuffle=False, workers=0)
# The custom schedule counts optimizer steps; MultiStepLR's milestones count epochs.
steps_per_epoch = len(train_loader)
milestones = [epochs // 2, 3 * epochs // 4]  # MultiStepLR: the epochs at whose start the LR drops


def small_cnn() -> nn.Module:
    """Four conv blocks and a linear head: small enough that the four runs take about a minute."""
    torch.manual_seed(0)  # the same initial weights for every schedule, so only the LR differs

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(
        *block(3, 32), nn.MaxPool2d(2), *block(32, 64), nn.MaxPool2d(2), *block(64, 128), nn.MaxPool2d(2),
        *block(128, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, len(ShapesDataset.classes)),
    )  # fmt: skip


# A custom schedule is a plain function `(step, base_lr) -> lr`, called with the number of
# optimizer steps taken so far (or epochs, with interval="epoch") and each param group's
# initial LR. Here: linear warmup over the first epoch, then cosine decay to zero.
# (To put a warmup in front of any scheduler instead, LearningRateScheduler also takes `warmup=N`.)
def warmup_cosine(step: int, base_lr: float) -> float:
    """LR at optimizer step `step` (counted from 0)."""
    warmup, total = steps_per_epoch, epochs * steps_per_epoch
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base_lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def make_schedule(name: str) -> LearningRateScheduler:
    """The `LearningRateScheduler` callback for schedule `name`."""
    if name == "onecycle":
        # A factory instead of a scheduler: the callback calls it at fit start with the
        # optimizer Accelerate prepared and, because the factory asks for it, the exact
        # number of optimizer steps per epoch (which gradient accumulation would change).
        def one_cycle(optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> OneCycleLR:
            return OneCycleLR(optimizer, max_lr=args.lr, epochs=epochs, steps_per_epoch=steps_per_epoch)

        # interval="step": OneCycleLR's curve is defined per optimizer step.
        return LearningRateScheduler(one_cycle, interval="step")
    if name == "step":
        # interval="epoch": the scheduler steps at each epoch end, so the LR is constant
        # within an epoch and is multiplied by gamma at each milestone.
        return LearningRateScheduler(lambda optimizer: MultiStepLR(optimizer, milestones, gamma=0.1), interval="epoch")
    if name == "plateau":
        # ReduceLROnPlateau reads a metric, so the callback hands it `monitor` from
        # trainer.state.metrics at each epoch end (after validation). It halves the LR when
        # val/loss has gone more than `patience` epochs (here: two in a row) without
        # beating its best by 2% (relative); then it waits for a new plateau.
        return LearningRateScheduler(
            lambda optimizer: ReduceLROnPlateau(optimizer, mode="min", factor=0.5, patience=1, threshold=0.02),
            interval="epoch",
            monitor="val/loss",
        )
    # lr_at replaces a scheduler class: the callback sets every group's LR to its value.
    return LearningRateScheduler(lr_at=warmup_cosine, interval="step")


def train(name: str) -> dict[str, float]:
    """Train one run with schedule `name` into `<log-dir>/<name>`; returns its final metrics."""
    model = small_cnn()
    # The optimizer's lr is the starting point every schedule works from (OneCycleLR sets
    # its own start, max_lr / 25); momentum lets OneCycleLR cycle it against the LR.
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    trainer = Trainer(
        model,
        optimizer,
        nn.CrossEntropyLoss(),
        metrics={"accuracy": accuracy},
        callbacks=[
            # lr/group0 is logged for the LR each logged batch trained with, and at each
            # epoch end. The "schedule" hparam lets the HPARAMS tab compare the runs by it.
            # No summary or graph: this example is about the scalars.
            TensorBoardLogger(f"{args.log_dir}/{name}", summary=False, graph=False, hparams={"schedule": name}),
            make_schedule(name),
        ],
        seed=0,
        # Log at every optimizer step so the LR curves show every step. Each log reads the
        # loss from the device (a sync): on a large model log less often.
        log_every_n_steps=1,
        progress_bar=False,
    )
    state = trainer.fit(train_loader, val_loader, epochs=epochs)
    return state.metrics


names = SCHEDULES if args.schedule == "all" else (args.schedule,)
print(f"{len(names)} run(s), {epochs} epochs of {steps_per_epoch} steps each; MultiStepLR milestones {milestones}")
for name in names:
    metrics = train(name)
    print(f"{name:>8}: val/loss {metrics['val/loss']:.3f}  val/accuracy {metrics['val/accuracy']:.3f}")
print(f"compare the curves: tensorboard --logdir {args.log_dir}")
