"""Penultimate-layer features of validation samples for TensorBoard's embedding projector."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from callbacks_kit.batches import side_forward
from callbacks_kit.cadence import due, warn_once
from callbacks_kit.callbacks.base import Callback, Order
from callbacks_kit.data.normalization import IMAGENET_MEAN, IMAGENET_STD
from callbacks_kit.errors import TrainerError
from callbacks_kit.inspection.classification import class_name, dataset_length
from callbacks_kit.inspection.probe import (
    class_names_of,
    display_images,
    is_image_batch,
    logits_of,
    probe_batch,
    probe_outputs,
)
from callbacks_kit.layers import find_modules, resolve_module

if TYPE_CHECKING:
    from callbacks_kit.trainer import Trainer


class Embeddings(Callback):
    """The features that enter the classifier head, for TensorBoard's projector (tag `embeddings/val`).

    The first `num_samples` validation samples (read from the dataset by index, so the
    same ones every time and in any number of processes) go through the bare model in eval
    mode on the main process, in chunks of `batch_size`, with a forward pre-hook on `layer`
    that lives for that forward only; its input, flattened, is the embedding. Each point
    carries its label, the predicted class and, for images, a thumbnail in the sprite.
    Written at the end of fit, and every `every_n_epochs` epochs when given.

    Args:
        num_samples: Validation samples projected (M).
        layer: The module whose input is the embedding; default: the last `nn.Linear`
            (the classifier head, so the features are the penultimate layer's).
        every_n_epochs: Also write every N epochs; None: only at the end of fit.
        class_names: One name per class; default: the dataset's `classes`, else indices.
        thumbnail_size: Side of each sprite thumbnail in pixels (0: no sprite).
        batch_size: Samples per forward.
        mean: Normalisation mean of the inputs, undone for the thumbnails; None stretches each image.
        std: Normalisation std of the inputs.
    """

    order = Order.INSPECT

    def __init__(
        self,
        num_samples: int = 500,
        layer: str | None = None,
        every_n_epochs: int | None = None,
        class_names: Sequence[str] | None = None,
        thumbnail_size: int = 32,
        batch_size: int = 64,
        mean: Sequence[float] | None = IMAGENET_MEAN,
        std: Sequence[float] | None = IMAGENET_STD,
    ) -> None:
        if num_samples < 1 or batch_size < 1 or thumbnail_size < 0:
            raise TrainerError(
                f"Embeddings: num_samples and batch_size must be at least 1 and thumbnail_size at least 0, got "
                f"num_samples={num_samples}, batch_size={batch_size}, thumbnail_size={thumbnail_size}"
            )
        if every_n_epochs is not None and every_n_epochs < 1:
            raise TrainerError(f"Embeddings: every_n_epochs must be at least 1 or None, got {every_n_epochs}")
        self.num_samples = num_samples
        self.layer = layer
        self.every_n_epochs = every_n_epochs
        self.class_names = list(class_names) if class_names is not None else None
        self.thumbnail_size = thumbnail_size
        self.batch_size = batch_size
        self.mean, self.std = mean, std
        self._written_at: int | None = None
        self._disabled = False

    def on_fit_start(self, trainer: Trainer) -> None:
        model = trainer.unwrapped_model
        if self.layer is None:
            linear = find_modules(model, nn.Linear)
            if not linear:
                raise TrainerError(
                    f"Embeddings: {type(model).__name__} has no nn.Linear head whose input would be the embedding; "
                    "pass layer='<module name>' (its input is what gets projected)"
                )
            self.layer = linear[-1][0]
        resolve_module(model, self.layer)  # on every process: a wrong name fails everywhere, before training
        if trainer.val_loader is None:
            raise TrainerError("Embeddings: projects validation samples, and fit has no val_loader; pass one")
        size = dataset_length(trainer)
        if size is None:
            raise TrainerError(
                "Embeddings: reads validation samples by index, and the validation dataset has no length "
                "(an IterableDataset); use a map-style dataset"
            )
        if self.num_samples > size and trainer.is_main_process:
            warn_once(
                self,
                "m",
                f"Embeddings: num_samples={self.num_samples} but the validation set has {size} samples; "
                f"it projects all {size}",
            )
        self.class_names = self.class_names or class_names_of(trainer)

    def on_epoch_end(self, trainer: Trainer) -> None:
        if self.every_n_epochs is not None and due(trainer.state.epoch, self.every_n_epochs):
            self.log(trainer)

    def on_fit_end(self, trainer: Trainer) -> None:
        if self._written_at != trainer.state.global_step:
            self.log(trainer)

    def log(self, trainer: Trainer) -> None:
        """Compute the embeddings and write them for the projector now (main process only)."""
        if trainer.tb_writer is None or self._disabled or self.layer is None:
            return
        result = self.features(trainer)
        if result is None:
            return
        features, labels, predicted, images = result
        metadata = [[self._name(int(t)), self._name(int(p))] for t, p in zip(labels, predicted, strict=True)]
        thumbnails = None
        if images is not None and self.thumbnail_size:
            thumbnails = F.interpolate(
                display_images(images, self.mean, self.std),
                size=(self.thumbnail_size, self.thumbnail_size),
                mode="bilinear",
                align_corners=False,
            ).cpu()
        step = trainer.state.global_step
        trainer.tb_writer.add_embedding(
            features,
            metadata=metadata,
            label_img=thumbnails,
            global_step=step,
            tag="embeddings/val",
            metadata_header=["label", "predicted"],
        )
        self._written_at = step

    @torch.no_grad()
    def features(self, trainer: Trainer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Any] | None:
        """`(features (M, D), labels (M,), predictions (M,), images or None)` on the CPU, or None with a warning."""
        assert self.layer is not None
        probe = probe_batch(trainer, self.num_samples)
        if probe is None:
            return None
        inputs, targets = probe
        if not isinstance(targets, torch.Tensor) or targets.ndim != 1:
            self._disable(f"needs (N,) class-index targets, got {type(targets).__name__}")
            return None
        model = trainer.unwrapped_model
        captured: list[torch.Tensor] = []

        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            if args and isinstance(args[0], torch.Tensor):
                captured.append(args[0].detach().flatten(1).float().cpu())

        chunks, predictions = [], []
        handle = resolve_module(model, self.layer).register_forward_pre_hook(hook)
        try:
            with side_forward(model, trainer.device):
                for start in range(0, targets.shape[0], self.batch_size):
                    chunk = _slice(inputs, start, start + self.batch_size)
                    before = len(captured)
                    logits = logits_of(probe_outputs(trainer, model, chunk, targets[start : start + self.batch_size]))
                    if len(captured) != before + 1 or logits is None or logits.ndim != 2:
                        self._disable(
                            f"layer {self.layer!r} must run once per forward on a tensor, and the model must "
                            "return (N, classes) logits"
                        )
                        return None
                    chunks.append(captured[-1])
                    predictions.append(logits.argmax(dim=1).cpu())
        finally:
            handle.remove()
        images = inputs if is_image_batch(inputs) else None
        return torch.cat(chunks), targets.cpu(), torch.cat(predictions), images

    def _disable(self, problem: str) -> None:
        self._disabled = True
        warn_once(self, "disabled", f"Embeddings: {problem}; disabled")

    def _name(self, index: int) -> str:
        return class_name(self.class_names, index)


def _slice(inputs: Any, start: int, stop: int) -> Any:
    """Rows `start:stop` of a tensor, or of each tensor in a dict."""
    if isinstance(inputs, dict):
        return {key: _slice(value, start, stop) for key, value in inputs.items()}
    return inputs[start:stop]
