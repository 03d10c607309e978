"""Drawing helpers for TensorBoard images: colormaps in torch, text with PIL, tile grids.

TensorBoard images have no titles or legends, so labels are drawn into the pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import make_grid

Colour = tuple[int, int, int]
GREEN: Colour = (40, 160, 60)
RED: Colour = (205, 40, 40)
BLACK: Colour = (20, 20, 20)
WHITE: Colour = (255, 255, 255)


def jet(x: torch.Tensor) -> torch.Tensor:
    """The jet colormap: `(..., H, W)` values in [0, 1] to `(..., 3, H, W)` RGB in [0, 1]."""
    x = x.clamp(0, 1).unsqueeze(-3)
    centres = torch.tensor([3.0, 2.0, 1.0], device=x.device).view(3, 1, 1)  # red, green, blue
    return (1.5 - (4 * x - centres).abs()).clamp(0, 1)


def blues(value: float) -> Colour:
    """White (0) to dark blue (1), like matplotlib's "Blues"."""
    value = min(max(value, 0.0), 1.0)
    low, high = (247, 251, 255), (8, 48, 107)
    red, green, blue = (round(a + (b - a) * value) for a, b in zip(low, high, strict=True))
    return red, green, blue


@lru_cache(maxsize=8)
def font(size: int = 12) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """PIL's built-in font at `size` pixels (the fixed bitmap font without FreeType)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


@lru_cache(maxsize=4096)
def text_size(text: str, size: int) -> tuple[int, int]:
    """Width and height in pixels of `text` drawn at `size`; remembered: the views draw the same labels each epoch."""
    left, top, right, bottom = font(size).getbbox(text)
    return int(right - left), int(bottom - min(top, 0))


@lru_cache(maxsize=8)
def line_height(size: int) -> int:
    """Height of one line of text at `size`, the same for every text."""
    return text_size("Ayg|", size)[1] + 3


def to_pil(image: torch.Tensor) -> Image.Image:
    """A `(3, H, W)` tensor in [0, 1] as a PIL RGB image."""
    array = (image.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array, "RGB")


def from_pil(image: Image.Image) -> torch.Tensor:
    """A PIL image as a `(3, H, W)` float tensor in [0, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    return torch.from_numpy(array).permute(2, 0, 1).float() / 255


def captioned(image: torch.Tensor, lines: Sequence[tuple[str, Colour]], size: int = 12) -> torch.Tensor:
    """`image` (3, H, W) with a white strip above it holding `lines`, each in its colour."""
    line = line_height(size)
    height = len(lines) * line + 4
    width = image.shape[-1]
    canvas = Image.new("RGB", (width, image.shape[-2] + height), WHITE)
    draw = ImageDraw.Draw(canvas)
    y = 2
    for text, colour in lines:
        while len(text) > 4 and text_size(text, size)[0] > width - 4:  # shorten what cannot fit
            text = text[:-4] + "..."
        draw.text((2, y), text, fill=colour, font=font(size))
        y += line
    canvas.paste(to_pil(image), (0, height))
    return from_pil(canvas)


def upscale(images: torch.Tensor, min_size: int) -> torch.Tensor:
    """Enlarge `(N, C, h, w)` tiles by a whole factor (nearest) until the shorter side reaches `min_size`."""
    factor = max(1, math.ceil(min_size / max(1, min(images.shape[-2:]))))
    return images if factor == 1 else F.interpolate(images, scale_factor=factor, mode="nearest")


def tile_images(images: torch.Tensor, side: int) -> torch.Tensor:
    """`(N, C, h, w)` images scaled to `side` x `side`: enlarged pixel by pixel (nearest), reduced with antialiasing."""
    if tuple(images.shape[-2:]) == (side, side):
        return images
    if min(images.shape[-2:]) < side:
        return F.interpolate(images, size=(side, side), mode="nearest-exact")
    return F.interpolate(images, size=(side, side), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


def grid(tiles: torch.Tensor, columns: int | None = None, padding: int = 2, background: float = 1.0) -> torch.Tensor:
    """`(N, C, h, w)` tiles in [0, 1] as one `(3, H, W)` image, nearly square by default."""
    columns = columns or math.ceil(math.sqrt(tiles.shape[0]))
    return make_grid(tiles.float().cpu(), nrow=columns, padding=padding, pad_value=background)
