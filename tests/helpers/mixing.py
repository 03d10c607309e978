"""The MixUp/CutMix resume runs, shared by the one-process test and the two-process worker."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader

from callbacks_kit import Callback, MixUpCutMix, Trainer, accuracy
from helpers.tiny import small_bn_cnn, tiny_image_data

EPOCHS = 3


def mix_trainer(callbacks: list[Callback], seed: int = 0) -> Trainer:
    """A small BatchNorm CNN with both transforms, some batches left clean, and mixing off after epoch 2."""
    model = small_bn_cnn()
    mix = MixUpCutMix(mixup_alpha=0.4, cutmix_alpha=1.0, p=0.8, stop_epoch=2)
    return Trainer(
        model,
        torch.optim.AdamW(model.parameters(), lr=0.05),
        nn.CrossEntropyLoss(label_smoothing=0.1),
        metrics={"accuracy": accuracy},
        callbacks=[mix, *callbacks],
        seed=seed,
        log_every_n_steps=3,
        progress_bar=False,
    )


def mix_loaders() -> tuple[DataLoader, DataLoader]:
    """64 shuffled training images in batches of 8 (8 steps per epoch in one process), 16 to validate."""
    return (
        DataLoader(tiny_image_data(64), batch_size=8, shuffle=True),
        DataLoader(tiny_image_data(16, seed=1), batch_size=8),
    )
