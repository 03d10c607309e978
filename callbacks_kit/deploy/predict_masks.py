"""Segmenting new images with a trained run: one index PNG per image at its own size, and coloured overlays.

Each image gets the run's preprocessing (resized to the input size, whole), the model's
logits are resized back to the image's size (bilinear) and the most likely class of each
pixel is written as an 8-bit index PNG (mode P: the pixel values are class indices, and the
embedded palette is the views' palette, so image viewers show the classes in colour).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from callbacks_kit.data.images import expand_images, read_image
from callbacks_kit.deploy.run_info import RunInfo, load_run_model
from callbacks_kit.distributed import best_device
from callbacks_kit.errors import DataError, DeployError
from callbacks_kit.inspection.segmentation_image import ALPHA, palette, palette_bytes
from callbacks_kit.segmentation_metrics import segmentation_logits

OVERLAY_SUFFIX = "_overlay"


@dataclass
class MaskPrediction:
    """One image's mask: where it was written, its overlay (when asked), and each predicted class's share of pixels."""

    path: str
    mask: str
    overlay: str | None
    size: tuple[int, int]  # width, height
    shares: dict[str, float]


@dataclass
class MaskPredictionResult:
    """What `predict_masks` returns: one `MaskPrediction` per readable image, in input order, and the skipped files."""

    predictions: list[MaskPrediction] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def output_paths(paths: Sequence[Path], output: Path) -> list[Path]:
    """The mask file of each image: its path below the images' common folder, under `output`, as `.png`.

    Raises:
        DeployError: two images that would write one mask (`a.jpg` and `a.png` side by side).
    """
    resolved = [p.resolve() for p in paths]
    root = Path(os.path.commonpath([str(p.parent) for p in resolved]))
    targets = [output / p.relative_to(root).with_suffix(".png") for p in resolved]
    seen: dict[Path, Path] = {}
    for source, target in zip(paths, targets, strict=True):
        if target in seen:
            raise DeployError(
                f"{seen[target]} and {source} would both be written to {target}; predict them into separate "
                "--output folders, or rename one"
            )
        seen[target] = source
    return targets


@torch.inference_mode()
def predict_mask_files(
    model: nn.Module,
    info: RunInfo,
    paths: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    overlay: bool = False,
    batch_size: int = 8,
    device: torch.device | None = None,
) -> MaskPredictionResult:
    """Segment image files with `model` (already loaded) and write one index PNG per image under `output`.

    With `overlay`, `<name>_overlay.png` beside each mask shows the image in grey with the
    classes' colours blended over it. Unreadable files are skipped with a warning naming each.
    """
    if batch_size < 1:
        raise DataError(f"batch_size must be at least 1, got {batch_size}")
    if not info.segmentation:
        raise DeployError(f"the run's model is a classifier ({info.model}); predict class names with `predict`")
    files = [Path(p) for p in paths]
    targets = output_paths(files, Path(output))
    device = device or best_device()
    model = model.eval().to(device)
    transform = info.transform()
    result = MaskPredictionResult()
    for start in range(0, len(files), batch_size):
        loaded = []
        for path, target in zip(files[start : start + batch_size], targets[start : start + batch_size], strict=True):
            image, reason = read_image(path)
            if image is None:
                result.skipped.append((str(path), str(reason)))
                continue
            assert isinstance(image, Image.Image)
            loaded.append((path, target, image))
        if not loaded:
            continue
        batch = torch.stack([transform(image) for _, _, image in loaded]).to(device)
        logits = segmentation_logits(model(batch))
        if logits is None or logits.ndim != 4:
            raise DeployError(f"the model of the run gives no (N, C, H, W) logits: {type(logits).__name__}")
        for (path, target, image), scores in zip(loaded, logits.float(), strict=True):
            result.predictions.append(_write(path, target, image, scores, info, overlay))
    if result.skipped:
        listed = "; ".join(f"{path} ({reason})" for path, reason in result.skipped[:20])
        warnings.warn(f"skipped {len(result.skipped)} unreadable image(s): {listed}", stacklevel=2)
    if not result.predictions:
        raise DataError(f"none of the {len(files)} image(s) could be read; check the files")
    return result


def _write(
    path: Path, target: Path, image: Image.Image, scores: torch.Tensor, info: RunInfo, overlay: bool
) -> MaskPrediction:
    """Resize one image's logits to its size, write its mask (and overlay); what was written."""
    width, height = image.size
    full = F.interpolate(scores[None], size=(height, width), mode="bilinear", align_corners=False)[0]
    classes = (full[0] > 0).long() if full.shape[0] == 1 else full.argmax(dim=0)
    mask = classes.to(torch.uint8).cpu().numpy()
    target.parent.mkdir(parents=True, exist_ok=True)
    indexed = Image.frombytes("P", (width, height), mask.tobytes())  # the values are the palette indices
    indexed.putpalette(palette_bytes())
    indexed.save(target)
    overlay_path = None
    if overlay:
        colours = palette().numpy()[mask].astype(np.float32)
        # Over the image's brightness, as in the views: over its colours a class would take hues the palette lacks.
        grey = np.asarray(image, dtype=np.float32).mean(axis=2, keepdims=True)
        blended = (1 - ALPHA) * grey + ALPHA * colours
        overlay_path = target.with_name(f"{target.stem}{OVERLAY_SUFFIX}.png")
        Image.fromarray(blended.clip(0, 255).round().astype(np.uint8)).save(overlay_path)
    counts = np.bincount(mask.ravel(), minlength=info.num_classes)
    shares = {info.classes[i]: float(counts[i]) / mask.size for i in np.flatnonzero(counts)}
    return MaskPrediction(str(path), str(target), str(overlay_path) if overlay_path else None, (width, height), shares)


def predict_masks(
    run: str | os.PathLike[str],
    images: Iterable[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    checkpoint: str = "best",
    overlay: bool = False,
    batch_size: int = 8,
    device: torch.device | str | None = None,
) -> MaskPredictionResult:
    """Segment image files, folders (recursively) and globs with a trained segmentation run.

    Args:
        run: The run folder (holding `run.json`).
        images: Files, folders or glob patterns.
        output: The folder masks are written into, mirroring the images' folders below their common one.
        checkpoint: "best", "last", or the path of a weights file or checkpoint folder.
        overlay: Also write `<name>_overlay.png`, the image with the class colours over it.
        batch_size: Images per forward pass.
        device: Where to run; default the best accelerator present, else the CPU.
    """
    paths = expand_images(images)
    model, info = load_run_model(run, checkpoint)
    return predict_mask_files(model, info, paths, output, overlay, batch_size, torch.device(device) if device else None)
