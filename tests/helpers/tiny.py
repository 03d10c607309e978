"""Tiny models and data that train in a few steps."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torch.utils.data import TensorDataset


def tiny_classification_data(n: int = 64, features: int = 8, classes: int = 3, seed: int = 0) -> TensorDataset:
    """A linearly separable dataset that a small MLP learns in a few steps."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    w = torch.randn(features, classes, generator=g)
    return TensorDataset(x, (x @ w).argmax(1))


def tiny_mlp(features: int = 8, classes: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(features, 16), nn.ReLU(), nn.Linear(16, classes))


def small_bn_cnn() -> nn.Module:
    """A small CNN with BatchNorm, in named blocks: stem, block, pool, head (3 classes, 3-channel input)."""
    torch.manual_seed(0)
    return nn.Sequential(
        OrderedDict(
            stem=nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()),
            block=nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()),
            pool=nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()),
            head=nn.Linear(4, 3),
        )
    )


def tiny_image_data(n: int = 64, size: int = 8, classes: int = 3, seed: int = 0) -> TensorDataset:
    """`(N, 3, size, size)` float images whose class is the channel with the brightest centre."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(classes, (n,), generator=g)
    images = 0.3 * torch.randn(n, 3, size, size, generator=g)
    centre = slice(size // 4, size - size // 4)
    images[torch.arange(n), labels % 3, centre, centre] += 1.0
    return TensorDataset(images, labels)


class TinySegmenter(nn.Module):
    """A 2-layer conv net that looks like a torchvision segmentation model: `{"out": (N, classes, H, W) logits}`."""

    def __init__(self, classes: int = 7, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.classifier = nn.Conv2d(8, classes, 3, padding=1)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.classifier(self.backbone(images))}
