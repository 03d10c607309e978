"""A confusion matrix drawn with PIL: counts in cells coloured by the share of their row.

Shared by the `ConfusionMatrix` callback (at each validation) and `deploy.evaluate` (once,
on a test set), so both draw the same picture.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image, ImageDraw

from callbacks_kit.inspection.render import BLACK, WHITE, blues, font, from_pil, text_size


def confusion_image(
    matrix: torch.Tensor,
    class_names: Sequence[str] | None = None,
    subtitle: str = "",
    max_text_classes: int = 30,
    unit: str = "samples",
    cells: str = "counts",
) -> torch.Tensor:
    """A `(3, H, W)` image of a `(classes, classes)` count matrix (rows: true classes, columns: predictions).

    Args:
        matrix: The counts.
        class_names: Axis labels; indices where None or too short.
        subtitle: Shown under the title, before the accuracy.
        max_text_classes: Above this many classes, cells show colour only.
        unit: What is counted, for the summary line ("samples", "pixels").
        cells: What each cell shows: "counts", or "shares" of its row in percent (for pixel
            counts, whose numbers do not fit a cell).
    """
    classes = matrix.shape[0]
    names = [class_names[i] if class_names is not None and i < len(class_names) else str(i) for i in range(classes)]
    # About 330 px wide for a few classes: TensorBoard shows images up to that unscaled.
    cell = max(6, min(48, 240 // classes))
    with_text = classes <= max_text_classes
    size = max(9, min(13, cell // 3))
    label_w = max(text_size(n, size)[0] for n in names) + 8 if with_text else 8
    total = int(matrix.sum())
    accuracy = matrix.diag().sum().item() / max(total, 1)
    summary = f"accuracy {accuracy:.3f} on {total} {unit}"
    titles = ["confusion matrix (colour: share of the row)", f"{subtitle}, {summary}" if subtitle else summary]
    top = 62 + (label_w if with_text else 8)
    left = 22 + label_w
    side = cell * classes
    width = max(left + side + 10, *(text_size(t, 12)[0] + 16 for t in titles))
    canvas = Image.new("RGB", (width, top + side + 10), WHITE)
    draw = ImageDraw.Draw(canvas)
    for i, title in enumerate(titles):
        draw.text((8, 4 + 16 * i), title, fill=BLACK, font=font(12))
    draw.text((left, 42), "predicted class", fill=BLACK, font=font(11))
    _vertical_text(canvas, "true class", (4, top), 11)
    rows = matrix.double() / matrix.sum(dim=1, keepdim=True).clamp_min(1).double()
    for r in range(classes):
        for c in range(classes):
            x, y = left + c * cell, top + r * cell
            value = float(rows[r, c])
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=blues(value), outline=(200, 200, 200))
            if with_text and cell >= 14:
                text = str(int(matrix[r, c])) if cells == "counts" else f"{value:.0%}"
                w, h = text_size(text, size)
                colour = WHITE if value > 0.5 else BLACK
                draw.text((x + (cell - w) / 2, y + (cell - h) / 2 - 1), text, fill=colour, font=font(size))
    if with_text:
        for i, name in enumerate(names):
            w, h = text_size(name, size)
            draw.text((left - w - 4, top + i * cell + (cell - h) / 2 - 1), name, fill=BLACK, font=font(size))
            _vertical_text(canvas, name, (left + i * cell + (cell - h) // 2, top - 4 - w), size)
    return from_pil(canvas)


def _vertical_text(canvas: Image.Image, text: str, at: tuple[int, int], size: int) -> None:
    """Draw `text` rotated to read bottom-up with its top-left corner at `at`."""
    w, h = text_size(text, size)
    strip = Image.new("RGB", (w + 2, h + 4), WHITE)
    ImageDraw.Draw(strip).text((1, 1), text, fill=BLACK, font=font(size))
    canvas.paste(strip.rotate(90, expand=True), at)
