"""Custom losses: a plain function and an nn.Module, each used as the Trainer's loss_fn.

Run: python examples/custom_loss.py
"""

import argparse

import torch
import torch.nn.functional as F
from torch import nn

from callbacks_kit import TensorBoardLogger, Trainer, accuracy
from callbacks_kit.data import ShapesDataset, make_loader
from callbacks_kit.finetune import build_classifier

parser = argparse.ArgumentParser()
parser.add_argument("--fast", action="store_true")
parser.add_argument("--log-dir", default="runs/custom_loss")
args = parser.parse_args()
size, n = (32, 128) if args.fast else (64, 1200)


# 1. A loss is any callable (outputs, targets) -> scalar tensor.
def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, smoothing: float = 0.1) -> torch.Tensor:
    """Cross-entropy against label-smoothed targets."""
    log_probs = F.log_softmax(logits, dim=1)
    true = F.one_hot(targets, logits.shape[1]).float() * (1 - smoothing) + smoothing / logits.shape[1]
    return -(true * log_probs).sum(dim=1).mean()  # reduce to a scalar: the trainer checks it


# 2. Or an nn.Module, when the loss has settings or buffers.
class ConfidencePenaltyLoss(nn.Module):
    """Cross-entropy minus a bonus for entropy: discourages over-confident predictions."""

    def __init__(self, beta: float = 0.1) -> None:
        super().__init__()
        self.beta = beta

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        probs = logits.softmax(dim=1)
        entropy = -(probs * probs.clamp_min(1e-8).log()).sum(dim=1).mean()
        return F.cross_entropy(logits, targets) - self.beta * entropy


train_loader = make_loader(ShapesDataset(n, size, seed=0), 32, shuffle=True, workers=0)
val_loader = make_loader(ShapesDataset(n // 4, size, seed=1), 64, shuffle=False, workers=0)

for name, loss_fn in [("function", soft_cross_entropy), ("module", ConfidencePenaltyLoss(beta=0.1))]:
    torch.manual_seed(0)  # the same initial weights every run (Trainer(seed=) covers data order and dropout)
    model = build_classifier("resnet18", num_classes=6)
    trainer = Trainer(
        model,
        torch.optim.AdamW(model.parameters(), lr=1e-3),
        loss_fn,
        metrics={"accuracy": accuracy},
        callbacks=[TensorBoardLogger(f"{args.log_dir}/{name}")],  # one run per loss, side by side in TensorBoard
        seed=0,
        log_every_n_steps=5,
    )
    metrics = trainer.fit(train_loader, val_loader, epochs=1 if args.fast else 2).metrics
    trainer.print(f"{name}: val/loss {metrics['val/loss']:.3f}  val/accuracy {metrics['val/accuracy']:.3f}")
