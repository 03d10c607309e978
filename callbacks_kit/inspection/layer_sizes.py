"""Which layers' outputs are large enough to show at the run's input size (Grad-CAM, feature maps).

A ResNet's `layer4` is 7x7 at 224 px but 1x1 at 32 px: a Grad-CAM there is one flat tint
and its feature maps are grey tiles. So the default layers are chosen on the run's own
probe images, by the size of their outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from callbacks_kit.batches import side_forward
from callbacks_kit.errors import LayerNotFoundError
from callbacks_kit.hooks import ActivationCapture
from callbacks_kit.inspection.probe import probe_outputs
from callbacks_kit.layers import conv_blocks

if TYPE_CHECKING:
    from callbacks_kit.trainer import Trainer

# The smallest output side a view is drawn from: 4x4 still locates something in the image.
MIN_SIDE = 4


def output_sizes(
    trainer: Trainer, names: Sequence[str], inputs: Any, targets: Any
) -> dict[str, tuple[int, int] | None]:
    """The `(H, W)` of each named layer's output on `inputs`, or None where it is no `(N, C, H, W)` map.

    One forward of the bare model in eval mode, without gradients, on a forked RNG, with
    hooks that keep only the shapes and are gone afterwards.
    """
    model = trainer.unwrapped_model

    def shape(name: str, output: torch.Tensor) -> tuple[int, ...]:
        return tuple(output.shape)

    with side_forward(model, trainer.device), torch.no_grad(), ActivationCapture(model, names, reduce=shape) as capture:
        probe_outputs(trainer, model, inputs, targets)
    sizes: dict[str, tuple[int, int] | None] = {}
    for name in names:
        found = capture.outputs.get(name)
        sizes[name] = (int(found[-2]), int(found[-1])) if isinstance(found, tuple) and len(found) == 4 else None
    return sizes


def visible_blocks(trainer: Trainer, inputs: Any, targets: Any, min_side: int = MIN_SIDE) -> list[str]:
    """The model's convolutional stages (`layers.conv_blocks`) whose output is at least `min_side` square on `inputs`.

    From input to output; when no stage is that large (a tiny input), the first stage.
    """
    blocks = conv_blocks(trainer.unwrapped_model)
    sizes = output_sizes(trainer, blocks, inputs, targets)
    visible = [name for name in blocks if (size := sizes[name]) is not None and min(size) >= min_side]
    return visible or blocks[:1]


def suggested_layer(trainer: Trainer, inputs: Any, targets: Any) -> str | None:
    """The last convolutional stage at least `MIN_SIDE` square on `inputs`; None for a model without convolutions."""
    try:
        return visible_blocks(trainer, inputs, targets)[-1]
    except LayerNotFoundError:
        return None


def too_small(name: str, size: tuple[int, int] | None, suggestion: str | None) -> str | None:
    """The warning for a layer whose output is 1x1 (None for any other): what it shows, and the fix."""
    if size is None or max(size) > 1:
        return None
    better = f", e.g. {suggestion!r}" if suggestion and suggestion != name else ""
    return (
        f"layer {name!r} gives 1x1 maps at this input size, so it shows one flat value per channel; "
        f"name a layer with a larger output{better}, or train on larger images"
    )
