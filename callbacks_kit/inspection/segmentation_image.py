"""Masks drawn for people: one fixed palette, overlays of truth and prediction, error maps and a legend.

TensorBoard cannot overlay a mask on an image, so the overlays are blended into RGB here.
Every view and every index PNG `predict` writes uses one palette, so a class has one colour
everywhere: class 0 black, classes 1 to 20 the 20 colours of matplotlib's "tab20" (the ten
strong ones first, then their light variants), the rest from the PASCAL VOC scheme, and 255
(the usual ignore index) the cream of VOC's "void".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import torch
from PIL import Image, ImageDraw

from callbacks_kit.inspection.render import BLACK, WHITE, font, from_pil, line_height, text_size, to_pil

ALPHA = 0.6  # weight of the class colour over the image in an overlay
# In the grids the class colours go over the image in grey: over its own colours they would
# mix into hues the legend does not show (a blue class on a yellow shape turns green).
GRID_ALPHA = 0.75
HEADER = ("image", "truth", "prediction", "errors")
TAB20 = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
    (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229),
)  # fmt: skip
VOID = (224, 224, 192)
# Wrong pixels in the errors tile: a colour no class has (render.RED is as red as class 4's (214, 39, 40)).
ERROR = (255, 0, 255)


@lru_cache(maxsize=1)
def palette() -> torch.Tensor:
    """The palette: `(256, 3)` uint8 colours, index i the colour of class i (255: void, cream)."""
    colours = torch.zeros(256, 3, dtype=torch.uint8)
    for index in range(256):
        value, red, green, blue = index, 0, 0, 0
        for bit in range(8):  # PASCAL VOC's bit-interleaved colours
            red |= ((value >> 0) & 1) << (7 - bit)
            green |= ((value >> 1) & 1) << (7 - bit)
            blue |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        colours[index] = torch.tensor([red, green, blue], dtype=torch.uint8)
    colours[1 : 1 + len(TAB20)] = torch.tensor(TAB20, dtype=torch.uint8)
    colours[255] = torch.tensor(VOID, dtype=torch.uint8)
    return colours


def palette_bytes() -> list[int]:
    """The palette as PIL's flat `[r, g, b, r, g, b, ...]` list, for mode P images."""
    return [int(v) for v in palette().flatten().tolist()]


def colourize(masks: torch.Tensor) -> torch.Tensor:
    """`(..., H, W)` class indices (0 to 255) as `(..., 3, H, W)` palette colours in [0, 1]."""
    colours = palette().to(masks.device).float() / 255
    return colours[masks.long().clamp(0, 255)].movedim(-1, -3)


def overlay(images: torch.Tensor, masks: torch.Tensor, alpha: float = ALPHA, grey: bool = False) -> torch.Tensor:
    """`(N, 3, H, W)` images in [0, 1] with the colours of `(N, H, W)` masks blended over them.

    With `grey` they are blended over the images' brightness alone, so each class keeps its
    legend colour's hue whatever the colour of the pixels under it.
    """
    under = images.mean(dim=1, keepdim=True).expand_as(images) if grey else images
    return ((1 - alpha) * under + alpha * colourize(masks)).clamp(0, 1)


def error_map(
    images: torch.Tensor, truth: torch.Tensor, predicted: torch.Tensor, ignore_index: int | None
) -> torch.Tensor:
    """The images in faded grey, wrong pixels magenta and ignored ones in the void colour: `(N, 3, H, W)` in [0, 1]."""
    grey = (0.35 + 0.4 * images.mean(dim=1, keepdim=True)).expand(-1, 3, -1, -1)
    error = torch.tensor(ERROR, device=images.device, dtype=images.dtype).view(1, 3, 1, 1) / 255
    wrong = (predicted != truth).unsqueeze(1)
    shown = torch.where(wrong, error, grey)
    if ignore_index is not None:
        ignored = (truth == ignore_index).unsqueeze(1)
        shown = torch.where(ignored, colourize(torch.full_like(truth, 255)), shown)
    return shown


def overlay_rows(
    images: torch.Tensor, truth: torch.Tensor, predicted: torch.Tensor, ignore_index: int | None
) -> torch.Tensor:
    """`(N, 4, 3, H, W)` tiles per image: the image, its truth and prediction in the legend's colours, the errors."""
    tiles = [
        images,
        overlay(images, truth, GRID_ALPHA, grey=True),
        overlay(images, predicted, GRID_ALPHA, grey=True),
        error_map(images, truth, predicted, ignore_index),
    ]
    return torch.stack(tiles, dim=1)


def overlay_grid(
    tiles: torch.Tensor,
    captions: Sequence[str],
    class_names: Sequence[str],
    ignore_index: int | None,
    tile_size: int = 128,
) -> torch.Tensor:
    """One `(3, H, W)` image: a header, a row of 4 tiles per image (captioned), and a legend of the class colours.

    Args:
        tiles: `(N, 4, 3, h, w)` in [0, 1], as `overlay_rows` gives.
        captions: One line per row, drawn above it.
        class_names: The legend's names, class i in palette colour i.
        ignore_index: Shown in the legend as "ignored" when not None.
        tile_size: Tiles are enlarged (nearest) to at least this many pixels wide.
    """
    n, columns, _, height, width = tiles.shape
    factor = max(1, math.ceil(tile_size / max(1, width)))
    width, height = width * factor, height * factor
    gap = 4
    canvas_width = columns * width + (columns + 1) * gap
    size = text_pixels(canvas_width)
    line = line_height(size)
    legend = legend_image(class_names, ignore_index, canvas_width, size)
    row_height = line + height + gap
    total = line + gap + n * row_height + legend.height
    canvas = Image.new("RGB", (canvas_width, total), WHITE)
    draw = ImageDraw.Draw(canvas)
    for column, title in enumerate(HEADER[:columns]):
        draw.text((gap + column * (width + gap), 2), title, fill=BLACK, font=font(size))
    y = line + gap
    for row in range(n):
        caption = _fit(captions[row] if row < len(captions) else "", canvas_width - 2 * gap, size)
        draw.text((gap, y), caption, fill=BLACK, font=font(size))
        for column in range(columns):
            tile = tiles[row, column]
            if factor > 1:
                tile = tile.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)
            canvas.paste(to_pil(tile), (gap + column * (width + gap), y + line))
        y += row_height
    canvas.paste(legend, (0, y))
    return from_pil(canvas)


def text_pixels(width: int) -> int:
    """The text size of a grid `width` pixels wide: TensorBoard shrinks a wide image to its card (about 350 px)."""
    return max(13, round(width / 28))


def legend_image(class_names: Sequence[str], ignore_index: int | None, width: int, size: int = 13) -> Image.Image:
    """A white strip with one colour swatch and name per class (and "ignored"), wrapped to `width`."""
    entries = [(name, tuple(int(v) for v in palette()[i % 256].tolist())) for i, name in enumerate(class_names)]
    if ignore_index is not None:
        entries.append((f"ignored ({ignore_index})", tuple(int(v) for v in palette()[255].tolist())))
    line = line_height(size)
    swatch, gap = line - 4, 4
    x, y, placed = gap, 2, []
    for name, colour in entries:
        item = swatch + 3 + text_size(name, size)[0] + 2 * gap
        if x + item > width and x > gap:
            x, y = gap, y + line
        placed.append((x, y, name, colour))
        x += item
    strip = Image.new("RGB", (width, y + line + 4), WHITE)
    draw = ImageDraw.Draw(strip)
    for x, y, name, colour in placed:
        draw.rectangle((x, y + 2, x + swatch, y + 2 + swatch), fill=colour, outline=BLACK)
        draw.text((x + swatch + 3, y), name, fill=BLACK, font=font(size))
    return strip


def _fit(text: str, width: int, size: int) -> str:
    while len(text) > 4 and text_size(text, size)[0] > width:
        text = text[:-4] + "..."
    return text
