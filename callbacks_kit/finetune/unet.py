"""A small U-Net that learns from scratch on a CPU: the segmentation job's default model.

torchvision's segmentation models are built for pretrained backbones: from random weights
LR-ASPP learned nothing on the built-in shapes in the main job's time (every pixel
background). This one does, because it keeps many channels per pixel: a strided stem halves
the input once, a U-Net of three downsamplings works at half resolution, and its logits are
upsampled back to the input's size.

It is laid out like torchvision's models so the same code serves both: `backbone` is the
encoder (what `--freeze-backbone` freezes and the feature maps show) and `classifier` the
decoder that makes the logits (the head).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

UNET = "unet"  # its name among the segmentation models


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    """Two 3x3 convolutions, each followed by BatchNorm and ReLU: a U-Net stage."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class UNetEncoder(nn.Module):
    """The strided stem and the stages; returns every stage's output, finest first (the skips)."""

    def __init__(self, width: int, depth: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        )
        channels = [width * 2**i for i in range(depth + 1)]
        self.stages = nn.ModuleList(
            [_conv_block(width, width)] + [_conv_block(channels[i], channels[i + 1]) for i in range(depth)]
        )

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The outputs of every stage: the first at half the input's size, each next one halved again."""
        features = [self.stages[0](self.stem(images))]
        for stage in self.stages[1:]:
            features.append(stage(F.max_pool2d(features[-1], 2)))
        return features


class UNetDecoder(nn.Module):
    """Upsamples the deepest features stage by stage, joining each skip, and ends in 1x1 logits."""

    def __init__(self, width: int, depth: int, num_classes: int) -> None:
        super().__init__()
        channels = [width * 2**i for i in range(depth + 1)]
        self.ups = nn.ModuleList(
            [nn.ConvTranspose2d(channels[i + 1], channels[i], 2, stride=2) for i in reversed(range(depth))]
        )
        self.stages = nn.ModuleList([_conv_block(2 * channels[i], channels[i]) for i in reversed(range(depth))])
        self.out = nn.Conv2d(width, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Logits at the finest stage's size from the encoder's `features` (finest first)."""
        x = features[-1]
        for i, (up, stage) in enumerate(zip(self.ups, self.stages, strict=True)):
            skip = features[-2 - i]
            # To the skip's size: where pooling floored an odd size, upsampling alone falls one pixel short.
            # Always, not only then, so that a traced or exported model takes any image size.
            x = F.interpolate(up(x), size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = stage(torch.cat([x, skip], dim=1))
        return self.out(x)


class UNet(nn.Module):
    """A U-Net for `num_classes` classes; `forward` returns the logits `(N, num_classes, H, W)`.

    Args:
        num_classes: Output channels (classes, background included).
        width: Channels of the first stage, doubled at each downsampling (32: 1.9 M parameters).
        depth: Downsamplings after the stem (3: the deepest features are 1/16 of the input).
    """

    def __init__(self, num_classes: int, width: int = 32, depth: int = 3) -> None:
        super().__init__()
        self.backbone = UNetEncoder(width, depth)
        self.classifier = UNetDecoder(width, depth, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The logits of `images`, upsampled to their size."""
        logits = self.classifier(self.backbone(images))
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
