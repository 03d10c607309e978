"""A line chart drawn with PIL into a TensorBoard image (the package does not depend on matplotlib)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from PIL import Image, ImageDraw

from callbacks_kit.inspection.render import BLACK, RED, WHITE, Colour, font, from_pil, line_height, text_size

GREY: Colour = (200, 200, 200)
BLUE: Colour = (31, 119, 180)
LIGHT_BLUE: Colour = (160, 200, 230)


def line_chart(
    xs: Sequence[float],
    series: Sequence[tuple[Sequence[float], Colour]],
    *,
    log_x: bool = False,
    marker: float | None = None,
    title: str = "",
    x_label: str = "",
    y_label: str = "",
    size: tuple[int, int] = (640, 400),
) -> torch.Tensor:
    """`series` (values, colour) against `xs` as a `(3, H, W)` image in [0, 1].

    The y range is that of the last series (the main one, drawn on top); the others are
    clipped to it. Non-finite values are left out; `marker` draws a red vertical line at that x.
    """
    width, height = size
    left, right, top, bottom = 64, 16, 12 + line_height(13), 40
    image = Image.new("RGB", size, WHITE)
    draw = ImageDraw.Draw(image)
    fx = [math.log10(x) if log_x else float(x) for x in xs]
    finite = [v for v in (series[-1][0] if series else []) if math.isfinite(v)]
    if not fx or not finite:
        draw.text((left, top), "no data", fill=BLACK, font=font(13))
        return from_pil(image)
    x0, x1 = min(fx), max(fx)
    y0, y1 = min(finite), max(finite)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)

    def point(x: float, y: float) -> tuple[float, float]:
        px = left + (x - x0) / (x1 - x0) * (width - left - right)
        py = height - bottom - min(max((y - y0) / (y1 - y0), 0.0), 1.0) * (height - top - bottom)
        return px, py

    draw.rectangle((left, top, width - right, height - bottom), outline=GREY)
    for i in range(5):  # ticks: x at 5 spots, y at 5 spots
        tx, ty = x0 + (x1 - x0) * i / 4, y0 + (y1 - y0) * i / 4
        px, _ = point(tx, y0)
        _, py = point(x0, ty)
        draw.line((px, height - bottom, px, height - bottom + 4), fill=BLACK)
        draw.line((left - 4, py, left, py), fill=BLACK)
        label = f"{10**tx:.0e}" if log_x else f"{tx:.3g}"
        draw.text((px - text_size(label, 11)[0] / 2, height - bottom + 6), label, fill=BLACK, font=font(11))
        draw.text((2, py - 6), f"{ty:.3g}", fill=BLACK, font=font(11))
    for values, colour in series:
        points = [point(x, y) for x, y in zip(fx, values, strict=False) if math.isfinite(y)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
    if marker is not None and marker > 0:
        mx, _ = point(math.log10(marker) if log_x else marker, y0)
        draw.line((mx, top, mx, height - bottom), fill=RED, width=1)
    draw.text((left, 4), title, fill=BLACK, font=font(13))
    label_width = text_size(x_label, 12)[0]
    draw.text(((width - label_width) / 2, height - 18), x_label, fill=BLACK, font=font(12))
    draw.text((width - right - text_size(y_label, 12)[0], 4), y_label, fill=BLACK, font=font(12))
    return from_pil(image)
