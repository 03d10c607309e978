"""Quick start: train a torchvision classifier on the built-in shapes, composing callbacks.

Run:  python examples/quickstart.py            (about a minute on a 2-core CPU)
Then: tensorboard --logdir runs/quickstart
"""

import argparse

import torch

from callbacks_kit import Callback, TensorBoardLogger, Trainer, accuracy
from callbacks_kit.data import ShapesDataset, make_loader
from callbacks_kit.finetune import build_classifier

parser = argparse.ArgumentParser()
parser.add_argument("--fast", action="store_true", help="tiny settings for a smoke test")
parser.add_argument("--log-dir", default="runs/quickstart")
args = parser.parse_args()

# The built-in dataset is generated from a seed: no download, the same on every machine.
train_set = ShapesDataset(200 if args.fast else 1500, image_size=32 if args.fast else 64, seed=0)
val_set = ShapesDataset(64 if args.fast else 300, image_size=32 if args.fast else 64, seed=1)
train_loader = make_loader(train_set, batch_size=32, shuffle=True, workers=0)
val_loader = make_loader(val_set, batch_size=64, shuffle=False, workers=0)

# Any torchvision classifier; its head is replaced for our 6 classes.
torch.manual_seed(0)  # the same initial weights every run (Trainer(seed=) covers data order and dropout)
model = build_classifier("resnet18", num_classes=len(ShapesDataset.classes))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)


class BestAccuracy(Callback):
    """A callback keeps its own state; events receive the trainer and read trainer.state."""

    def __init__(self) -> None:
        self.best = 0.0

    def on_validation_end(self, trainer: Trainer) -> None:
        self.best = max(self.best, trainer.state.metrics["val/accuracy"])

    def on_fit_end(self, trainer: Trainer) -> None:
        trainer.print(f"best val/accuracy {self.best:.3f}")


best = BestAccuracy()
trainer = Trainer(
    model,
    optimizer,
    torch.nn.CrossEntropyLoss(),
    metrics={"accuracy": accuracy},  # logged as val/accuracy
    callbacks=[TensorBoardLogger(args.log_dir), best],
    seed=0,
    log_every_n_steps=5,  # the host reads the loss from the device only this often
)
trainer.fit(train_loader, val_loader, epochs=1 if args.fast else 3)
trainer.print(f"open the run with: tensorboard --logdir {args.log_dir}")
