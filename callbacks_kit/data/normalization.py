"""The ImageNet mean and std that pretrained models expect, and undoing them for display.

Only torch here: the callbacks that draw images import this module, and it must not pull in
PIL or torchvision's datasets.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def denormalize(
    images: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """Undo the ImageNet normalisation for display, clamped to [0, 1]."""
    mean_t = torch.tensor(mean, device=images.device).view(-1, 1, 1)
    std_t = torch.tensor(std, device=images.device).view(-1, 1, 1)
    return (images * std_t + mean_t).clamp(0, 1)
