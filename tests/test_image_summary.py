"""The callbacks' images: the pixels `SummaryWriter.add_image` writes, in a PNG encoded at a faster zlib level."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from callbacks_kit.errors import CallbacksKitError
from callbacks_kit.inspection.image_summary import add_image


def images(folder, tag: str) -> list[tuple[int, np.ndarray, bytes]]:
    events = EventAccumulator(str(folder), size_guidance={"images": 0}).Reload()
    return [
        (e.step, np.asarray(Image.open(io.BytesIO(e.encoded_image_string))), e.encoded_image_string)
        for e in events.Images(tag)
    ]


@pytest.mark.parametrize(
    "image",
    [
        torch.rand(3, 37, 53) * 1.2 - 0.1,  # floats, some outside [0, 1]: clipped
        torch.rand(1, 20, 30),  # one channel: grey RGB
        torch.randint(0, 256, (3, 16, 24), dtype=torch.uint8),  # 8-bit: as it is
        torch.rand(4, 12, 12),  # RGBA
    ],
    ids=["float", "grey", "uint8", "rgba"],
)
def test_the_pixels_are_those_add_image_writes(tmp_path, image):
    writer = SummaryWriter(str(tmp_path))
    writer.add_image("stock", image, 3)
    add_image(writer, "fast", image, 3)
    writer.close()
    ((stock_step, stock, stock_png),) = images(tmp_path, "stock")
    ((step, fast, fast_png),) = images(tmp_path, "fast")
    assert step == stock_step == 3
    assert fast.shape == stock.shape and np.array_equal(fast, stock)
    assert fast_png != stock_png  # the same pixels, encoded at another zlib level
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0}).Reload()
    (stock_event,), (fast_event,) = events.Images("stock"), events.Images("fast")
    assert (fast_event.height, fast_event.width) == (stock_event.height, stock_event.width)


def test_a_closed_writer_is_opened_again_as_add_image_does(tmp_path):
    writer = SummaryWriter(str(tmp_path))
    writer.close()
    add_image(writer, "late", torch.rand(3, 8, 8), 1)
    writer.close()
    assert len(images(tmp_path, "late")) == 1


def test_an_image_that_is_not_chw_is_refused(tmp_path):
    writer = SummaryWriter(str(tmp_path))
    with pytest.raises(CallbacksKitError, match=r"\(C, H, W\) image with 1, 3 or 4 channels, got shape \(8, 8\)"):
        add_image(writer, "bad", torch.rand(8, 8), 0)
    writer.close()
