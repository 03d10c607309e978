"""Classifying new images with a trained run: top-k class names and probabilities per image."""

from __future__ import annotations

import csv
import json
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from callbacks_kit.data.images import expand_images, read_image
from callbacks_kit.deploy.output_file import check_output_file
from callbacks_kit.deploy.run_info import RunInfo, load_run_model
from callbacks_kit.distributed import best_device
from callbacks_kit.errors import DataError, DeployError


@dataclass
class Prediction:
    """One image's top-k classes, most likely first, with their softmax probabilities."""

    path: str
    classes: list[str]
    probabilities: list[float]

    @property
    def label(self) -> str:
        """The most likely class."""
        return self.classes[0]


@dataclass
class PredictionResult:
    """What `predict` returns: one `Prediction` per readable image, in input order, and the skipped files."""

    predictions: list[Prediction] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


@torch.inference_mode()
def predict_images(
    model: nn.Module,
    info: RunInfo,
    paths: Sequence[str | os.PathLike[str]],
    top_k: int = 5,
    batch_size: int = 32,
    device: torch.device | None = None,
) -> PredictionResult:
    """Run `model` (already loaded) on image files in batches with the run's preprocessing.

    Unreadable files are skipped with a warning naming each; the rest are predicted.
    """
    if top_k < 1 or batch_size < 1:
        raise DataError(f"top_k and batch_size must be at least 1, got {top_k} and {batch_size}")
    device = device or best_device()
    model = model.eval().to(device)
    transform = info.transform()
    k = min(top_k, info.num_classes)
    result = PredictionResult()
    for start in range(0, len(paths), batch_size):
        names, tensors = [], []
        for path in paths[start : start + batch_size]:
            image, reason = read_image(path)
            if image is None:
                result.skipped.append((str(path), str(reason)))
                continue
            names.append(str(path))
            tensors.append(transform(image))
        if not tensors:
            continue
        probabilities = model(torch.stack(tensors).to(device)).float().softmax(dim=1)
        top = probabilities.topk(k, dim=1)
        for name, values, indices in zip(names, top.values.tolist(), top.indices.tolist(), strict=True):
            result.predictions.append(Prediction(name, [info.classes[i] for i in indices], values))
    if result.skipped:
        listed = "; ".join(f"{path} ({reason})" for path, reason in result.skipped[:20])
        warnings.warn(f"skipped {len(result.skipped)} unreadable image(s): {listed}", stacklevel=2)
    if not result.predictions:
        raise DataError(f"none of the {len(paths)} image(s) could be read; check the files")
    return result


def predict(
    run: str | os.PathLike[str],
    images: Iterable[str | os.PathLike[str]],
    checkpoint: str = "best",
    top_k: int = 5,
    batch_size: int = 32,
    device: torch.device | str | None = None,
) -> PredictionResult:
    """Classify image files, folders (recursively) and globs with a trained run.

    Args:
        run: The run folder (holding `run.json`).
        images: Files, folders or glob patterns.
        checkpoint: "best", "last", or the path of a weights file or checkpoint folder.
        top_k: Classes reported per image.
        batch_size: Images per forward pass.
        device: Where to run; default the best accelerator present, else the CPU.
    """
    paths = expand_images(images)
    model, info = load_run_model(run, checkpoint)
    return predict_images(model, info, paths, top_k, batch_size, torch.device(device) if device else None)


def _top(prediction: Prediction) -> list[dict[str, object]]:
    pairs = zip(prediction.classes, prediction.probabilities, strict=True)
    return [{"class": name, "probability": value} for name, value in pairs]


OUTPUT_SUFFIXES = (".csv", ".json")


def write_predictions(result: PredictionResult, path: str | os.PathLike[str]) -> Path:
    """Write predictions as CSV (`path, class_1, probability_1, ...`) or JSON, by the file's extension.

    Missing folders of `path` are made. The CLI checks `path` with `check_output_file`
    before predicting, so a place it cannot write to fails before any work.
    """
    path = check_output_file(path, suffixes=OUTPUT_SUFFIXES)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write(result, path)
    except OSError as exc:
        raise DeployError(f"--output {path}: cannot write it ({exc.strerror or exc}); choose another file") from exc
    return path


def _write(result: PredictionResult, path: Path) -> None:
    if path.suffix.lower() == ".json":
        rows = [{"path": p.path, "top": _top(p)} for p in result.predictions]
        skipped = [{"path": name, "reason": reason} for name, reason in result.skipped]
        path.write_text(json.dumps({"predictions": rows, "skipped": skipped}, indent=2) + "\n")
    else:
        k = max(len(p.classes) for p in result.predictions)
        header = ["path"] + [f"{kind}_{i + 1}" for i in range(k) for kind in ("class", "probability")]
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            for p in result.predictions:
                writer.writerow([p.path] + [x for pair in zip(p.classes, p.probabilities, strict=True) for x in pair])
