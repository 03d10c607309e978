"""The validation samples the model gets most wrong: a top-loss gallery and the most confused class pairs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from callbacks_kit.cadence import warn_once
from callbacks_kit.callbacks.base import Callback, Order
from callbacks_kit.callbacks.grad_cam import GradCAM
from callbacks_kit.data.normalization import IMAGENET_MEAN, IMAGENET_STD
from callbacks_kit.errors import TrainerError
from callbacks_kit.inspection.classification import (
    ConfusionCounts,
    check_outputs_at_fit_start,
    class_name,
    dataset_length,
    gathered_batch,
    most_confused,
)
from callbacks_kit.inspection.image_summary import add_image
from callbacks_kit.inspection.layer_sizes import visible_blocks
from callbacks_kit.inspection.probe import class_names_of, display_images, is_image_batch, probe_batch
from callbacks_kit.inspection.render import BLACK, GREEN, RED, captioned, grid, jet, tile_images
from callbacks_kit.layers import last_conv_block, resolve_module

if TYPE_CHECKING:
    from callbacks_kit.trainer import Trainer


class TopLosses(Callback):
    """The `k` validation samples with the highest loss, across all processes (`top_losses/val`).

    Each validation batch's logits and targets are gathered (each sample once across
    processes); the main process computes the per-sample cross-entropy on the device and
    keeps a running top-k of losses, positions, probabilities and images, so memory is
    bounded by `k`, never by the validation set, and no batch waits for the host. At the
    end of the validation it writes:

    - an image grid (`top_losses/<prefix>`): each image un-normalised, titled with its
      position in the validation order (the dataset index when the loader does not
      shuffle), its loss, the predicted class and probability (red) and the true class and
      its probability; optionally with its Grad-CAM overlay;
    - a markdown table of the same samples and the most confused class pairs
      (`top_losses/<prefix>` in the text dashboard), also for inputs that are not images.

    Args:
        k: Samples shown.
        class_names: One name per output; default: the dataset's `classes`, else indices.
        confused_pairs: Most confused (true, predicted) pairs listed in the text.
        gradcam: Overlay each image's Grad-CAM for its predicted class: False, True (the
            last convolutional stage whose output is at least 4x4, as `GradCAM` picks it)
            or a layer name.
        every_n_validations: Validations between galleries.
        columns: Tiles per row of the grid. With `image_size` the default fits TensorBoard's
            image card (350 px wide) unscaled, so the captions stay legible.
        image_size: Side of each tile in pixels (every image is scaled to it: enlarged
            pixel by pixel, or reduced smoothly).
        mean: Normalisation mean of the inputs, undone to show them; None stretches each image.
        std: Normalisation std of the inputs.
        label_smoothing: Label smoothing of the per-sample cross-entropy (match your loss).
        prefix: The validation it looks at (`trainer.state.validation_prefix`).
    """

    order = Order.INSPECT

    def __init__(
        self,
        k: int = 16,
        class_names: Sequence[str] | None = None,
        confused_pairs: int = 5,
        gradcam: bool | str = False,
        every_n_validations: int = 1,
        columns: int = 3,
        image_size: int = 110,
        mean: Sequence[float] | None = IMAGENET_MEAN,
        std: Sequence[float] | None = IMAGENET_STD,
        label_smoothing: float = 0.0,
        prefix: str = "val",
    ) -> None:
        if min(k, every_n_validations, columns) < 1 or confused_pairs < 0:
            raise TrainerError(
                f"TopLosses: k, every_n_validations and columns must be at least 1 and confused_pairs at least 0, "
                f"got k={k}, every_n_validations={every_n_validations}, columns={columns}, "
                f"confused_pairs={confused_pairs}"
            )
        self.k = k
        self.class_names = list(class_names) if class_names is not None else None
        self.confused_pairs = confused_pairs
        self.gradcam = gradcam
        self.every_n_validations = every_n_validations
        self.columns = columns
        self.image_size = image_size
        self.mean, self.std = mean, std
        self.label_smoothing = label_smoothing
        self.prefix = prefix
        self.confusion = ConfusionCounts()
        # The running top-k, on the device: losses, positions in the validation order, probabilities, targets, images.
        self.losses: torch.Tensor | None = None
        self.positions: torch.Tensor | None = None
        self.probs: torch.Tensor | None = None
        self.targets: torch.Tensor | None = None
        self.images: torch.Tensor | None = None
        self._seen = 0
        self._validations = 0
        self._disabled = False
        self._cam: GradCAM | None = None

    def on_fit_start(self, trainer: Trainer) -> None:
        if trainer.val_loader is None:
            self._disabled = True
            if trainer.is_main_process:
                warn_once(self, "no-val", "TopLosses: fit has no val_loader, so there are no validation losses")
            return
        if self.gradcam:
            model = trainer.unwrapped_model
            layer = self.gradcam if isinstance(self.gradcam, str) else last_conv_block(model)
            resolve_module(model, layer)  # a wrong name fails on every process before training
            probe = probe_batch(trainer, 1) if trainer.tb_writer is not None and self.gradcam is True else None
            if probe is not None and is_image_batch(probe[0]):  # the main process draws: the layer it can show
                layer = visible_blocks(trainer, *probe)[-1]
            self._cam = GradCAM(layer, mean=self.mean, std=self.std)
        check_outputs_at_fit_start(trainer, self, self.class_names)
        self.class_names = self.class_names or class_names_of(trainer)
        size = dataset_length(trainer)
        if size is not None and self.k > size and trainer.is_main_process:
            warn_once(
                self, "k", f"TopLosses: k={self.k} but the validation set has {size} samples; it shows all {size}"
            )

    def on_validation_start(self, trainer: Trainer) -> None:
        if trainer.state.validation_prefix == self.prefix:
            self.confusion.reset()
            self.losses = self.positions = self.probs = self.targets = self.images = None
            self._seen = 0

    def on_validation_batch_end(self, trainer: Trainer) -> None:
        if self._disabled or trainer.state.validation_prefix != self.prefix:
            return
        batch = gathered_batch(trainer, self)
        if batch is None:
            self._disabled = True
            return
        logits, targets = batch
        inputs = trainer.last_inputs
        images = is_image_batch(inputs)
        if images and trainer.accelerator.num_processes > 1:
            inputs = trainer.accelerator.gather_for_metrics(inputs)  # every process takes part
        if not trainer.is_main_process:
            return
        self.confusion.add(logits, targets)
        self.add(logits, targets, inputs if images else None)

    def add(self, logits: torch.Tensor, targets: torch.Tensor, images: torch.Tensor | None) -> None:
        """Merge one gathered batch into the running top-k (on the device, no host read)."""
        n, classes = logits.shape
        truth = targets.long()
        valid = (truth >= 0) & (truth < classes)
        losses = F.cross_entropy(
            logits.float(), truth.clamp(0, classes - 1), reduction="none", label_smoothing=self.label_smoothing
        )
        losses = torch.where(valid, losses, torch.full_like(losses, -torch.inf))  # ignored targets never rank
        positions = torch.arange(self._seen, self._seen + n, device=logits.device)
        probs = logits.detach().float().softmax(dim=1)
        self._seen += n
        images = images.detach() if images is not None else None
        if self.losses is not None:  # after the running top-k, whose tensors are set together
            assert self.positions is not None and self.probs is not None and self.targets is not None
            losses = torch.cat([self.losses, losses])
            positions = torch.cat([self.positions, positions])
            probs = torch.cat([self.probs, probs])
            truth = torch.cat([self.targets, truth])
            images = None if self.images is None or images is None else torch.cat([self.images, images])
        top = losses.topk(min(self.k, losses.shape[0])).indices
        self.losses, self.positions, self.probs, self.targets = losses[top], positions[top], probs[top], truth[top]
        self.images = None if images is None else images[top]

    def on_validation_end(self, trainer: Trainer) -> None:
        if self._disabled or trainer.state.validation_prefix != self.prefix:
            return
        self._validations += 1
        if trainer.tb_writer is None or self.losses is None or self._validations % self.every_n_validations:
            return
        assert self.positions is not None and self.probs is not None and self.targets is not None  # set with losses
        keep = torch.isfinite(self.losses).cpu()
        losses, positions = self.losses.cpu()[keep], self.positions.cpu()[keep]
        probs, targets = self.probs.cpu()[keep], self.targets.cpu()[keep]
        step = trainer.state.global_step
        matrix = self.confusion.matrix()
        pairs = most_confused(matrix, self.confused_pairs) if matrix is not None else []
        table = self.table(losses, positions, probs, targets, pairs)
        trainer.tb_writer.add_text(f"top_losses/{self.prefix}", table, step)
        if self.images is None:
            warn_once(self, "images", "TopLosses: the inputs are not (N, C, H, W) images; only the text table shows")
            return
        images = self.images[keep.to(self.images.device)]
        gallery = self.gallery(trainer, images, losses, positions, probs, targets)
        add_image(trainer.tb_writer, f"top_losses/{self.prefix}", gallery, step)

    def gallery(
        self,
        trainer: Trainer,
        images: torch.Tensor,
        losses: torch.Tensor,
        positions: torch.Tensor,
        probs: torch.Tensor,
        targets: torch.Tensor,
    ) -> torch.Tensor:
        """The `(3, H, W)` grid of captioned tiles, worst first."""
        shown = display_images(images, self.mean, self.std)
        if self._cam is not None:
            result = self._cam.heatmaps(trainer, images, targets.to(images.device))
            if result is not None:
                shown = (0.55 * shown + 0.45 * jet(result[0])).clamp(0, 1)
        shown = tile_images(shown, self.image_size)
        tiles = []
        confidence, predicted = probs.max(dim=1)
        for i, tile in enumerate(shown.cpu()):
            pred, true = int(predicted[i]), int(targets[i])
            lines = [
                (f"#{int(positions[i])}  loss {float(losses[i]):.2f}", BLACK),
                (f"pred {self._name(pred)} {float(confidence[i]):.0%}", GREEN if pred == true else RED),
                (f"true {self._name(true)} {float(probs[i, true]):.0%}", BLACK),
            ]
            tiles.append(captioned(tile, lines))
        return grid(torch.stack(tiles), self.columns)

    def table(
        self,
        losses: torch.Tensor,
        positions: torch.Tensor,
        probs: torch.Tensor,
        targets: torch.Tensor,
        pairs: list[tuple[int, int, int]],
    ) -> str:
        """The top losses and the most confused pairs as markdown."""
        rows = [
            "| rank | sample | loss | predicted | p | true | p(true) |",
            "| ---: | ---: | ---: | --- | ---: | --- | ---: |",
        ]
        confidence, predicted = probs.max(dim=1)
        for i in range(losses.shape[0]):
            true = int(targets[i])
            rows.append(
                f"| {i + 1} | {int(positions[i])} | {float(losses[i]):.3f} | {self._name(int(predicted[i]))} "
                f"| {float(confidence[i]):.3f} | {self._name(true)} | {float(probs[i, true]):.3f} |"
            )
        text = "\n".join(rows)
        if pairs:
            text += "\n\n**Most confused** (true → predicted: samples)\n\n"
            text += "\n".join(f"- {self._name(t)} → {self._name(p)}: {count}" for t, p, count in pairs)
        elif self.confused_pairs:
            text += "\n\nNo class was confused with another."
        return text

    def _name(self, index: int) -> str:
        return class_name(self.class_names, index)
