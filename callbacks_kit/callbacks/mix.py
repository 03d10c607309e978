"""MixUp and CutMix of the training batch through torchvision's own transforms; train accuracy on the hard labels."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torchvision.transforms import v2

from callbacks_kit.batches import side_forward
from callbacks_kit.callbacks.base import Callback, Order
from callbacks_kit.errors import AugmentationError
from callbacks_kit.inspection.probe import logits_of, probe_outputs
from callbacks_kit.inspection.run_writer import add_metric

if TYPE_CHECKING:
    from callbacks_kit.trainer import Trainer


class MixUpCutMix(Callback):
    """MixUp and/or CutMix of each training batch (`torchvision.transforms.v2.MixUp` / `CutMix`).

    In `on_before_forward` the batch's images `(N, C, H, W)` and class indices `(N,)` are
    replaced by mixed images and soft targets `(N, classes)`, which `nn.CrossEntropyLoss`
    takes as class probabilities (label smoothing, if the loss has it, applies on top).
    Samples are paired with their neighbour in the (shuffled) batch, as torchvision does.
    With both transforms on, each batch gets one of the two (`switch_prob` is the chance of
    CutMix), as in torchvision's reference scripts: `v2.RandomApply([v2.RandomChoice([mixup, cutmix])])`.
    Every draw (apply or not, which one, lambda, the box) comes from torch's global CPU
    generator, which checkpoints save and restore: a resumed run mixes exactly as an
    uninterrupted one. In several processes each rank mixes its own shard of the batch.

    Training accuracy is measured against the hard labels kept before mixing, summed on the
    device and read only at log steps (`train/accuracy` in `state.metrics`; in TensorBoard
    `accuracy/step` of the `train/` sub-run).
    Validation is never mixed.

    Args:
        mixup_alpha: MixUp's weight `lam` is drawn from a Beta distribution with both shapes
            `mixup_alpha`; None turns MixUp off.
        cutmix_alpha: The same for CutMix, whose box covers `1 - lam` of the image; None turns
            CutMix off.
        p: Probability that a batch is mixed at all, in (0, 1].
        switch_prob: With both on, the probability that a batch gets CutMix rather than MixUp.
        stop_epoch: Mix in epochs `0 .. stop_epoch - 1` only (epochs count from 0), then
            train on clean batches, a common end of the recipe; None mixes to the end.
        num_classes: Length of the soft targets; None reads it from the model's outputs on
            the first batch. Given, it must equal the model's number of outputs.

    Attributes:
        hard_targets: The current training batch's class indices, as they were before mixing.
        classes: The length of the soft targets, settled at the first training batch.
        transform: The torchvision transform applied (`build(classes)`).

    Raises:
        AugmentationError: At construction for alpha <= 0, both transforms off, p or
            switch_prob outside [0, 1], p = 0 or stop_epoch < 1 (nothing would be mixed).
            Before the forward of a training batch (checked on each, from shapes and dtypes
            only) for targets that are not class indices (float or regression targets, masks
            `(N, H, W)`) and inputs that are not `(N, C, H, W)` images; at the first batch for a
            num_classes that differs from the model's outputs.
    """

    order = Order.DEFAULT

    def __init__(
        self,
        mixup_alpha: float | None = 0.2,
        cutmix_alpha: float | None = 1.0,
        p: float = 1.0,
        switch_prob: float = 0.5,
        stop_epoch: int | None = None,
        num_classes: int | None = None,
    ) -> None:
        for name, alpha in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
            if alpha is not None and not (math.isfinite(alpha) and alpha > 0):
                raise AugmentationError(
                    f"{name} must be a finite number > 0 (the Beta distribution's alpha; 0.2 for MixUp and 1.0 for "
                    f"CutMix are common), got {alpha}; pass None to turn that transform off"
                )
        if mixup_alpha is None and cutmix_alpha is None:
            raise AugmentationError("mixup_alpha and cutmix_alpha are both None: give at least one of them")
        for name, value in (("p", p), ("switch_prob", switch_prob)):
            if not 0 <= value <= 1:
                raise AugmentationError(f"{name} is a probability: it must be within [0, 1], got {value}")
        if p == 0:  # as stop_epoch=0: a mixing callback that never mixes is a mistake, not a setting
            raise AugmentationError(
                "p is 0: no batch would ever be mixed; give the share of batches to mix, above 0 (1 mixes every "
                "batch), or leave MixUp/CutMix out"
            )
        if stop_epoch is not None and stop_epoch < 1:
            raise AugmentationError(
                f"stop_epoch={stop_epoch} would never mix: give the first epoch (from 0) trained without mixing, "
                "at least 1, or None to mix to the end"
            )
        if num_classes is not None and num_classes < 2:
            raise AugmentationError(f"num_classes must be at least 2 for a classifier, got {num_classes}")
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, cutmix_alpha
        self.p, self.switch_prob, self.stop_epoch = p, switch_prob, stop_epoch
        self.num_classes = num_classes
        self.classes: int | None = None  # the length of the soft targets, settled at the first batch
        self.transform: Any = None
        self.hard_targets: torch.Tensor | None = None
        self._sums: torch.Tensor | None = None  # [correct, seen] since the last log step, on the device
        self._checked = False

    def build(self, num_classes: int) -> Any:
        """The torchvision transform this callback applies: `(images, labels) -> (images, soft labels)`."""
        chosen = []
        if self.mixup_alpha is not None and (self.cutmix_alpha is None or self.switch_prob < 1):
            chosen.append((v2.MixUp(alpha=self.mixup_alpha, num_classes=num_classes), 1 - self.switch_prob))
        if self.cutmix_alpha is not None and (self.mixup_alpha is None or self.switch_prob > 0):
            chosen.append((v2.CutMix(alpha=self.cutmix_alpha, num_classes=num_classes), self.switch_prob))
        transforms, weights = [t for t, _ in chosen], [w for _, w in chosen]
        transform = transforms[0] if len(chosen) == 1 else v2.RandomChoice(transforms, weights)
        return transform if self.p == 1 else v2.RandomApply([transform], p=self.p)

    def active(self, epoch: int) -> bool:
        """Whether batches of `epoch` are mixed."""
        return self.p > 0 and (self.stop_epoch is None or epoch < self.stop_epoch)

    # ------------------------------------------------------------------------------ events
    def on_fit_start(self, trainer: Trainer) -> None:
        self._sums = torch.zeros(2, dtype=torch.long, device=trainer.device)
        self._checked = False

    def on_before_forward(self, trainer: Trainer) -> None:
        inputs, targets = trainer.last_inputs, trainer.last_targets
        check_batch(inputs, targets)
        if not self._checked:
            self.classes = self._classes_of_model(trainer, inputs, targets)
            self.transform = self.build(self.classes)
            self._checked = True
        targets = targets.long()  # one_hot takes int64 only; a no-op for the usual labels
        self.hard_targets = targets
        if self.active(trainer.state.epoch):
            trainer.last_inputs, trainer.last_targets = self.transform(inputs, targets)

    def on_train_batch_end(self, trainer: Trainer) -> None:
        logits = logits_of(trainer.last_outputs)
        if self._sums is None or self.hard_targets is None or logits is None or logits.ndim != 2:
            return
        self._sums[0] += (logits.detach().argmax(dim=1) == self.hard_targets).sum()
        self._sums[1] += self.hard_targets.shape[0]
        if trainer.state.is_log_step:  # the host reads only where the trainer reads the loss
            correct_total, seen = trainer.accelerator.reduce(self._sums, reduction="sum").tolist()
            self._sums.zero_()
            if seen:
                trainer.state.metrics["train/accuracy"] = correct_total / seen
                if trainer.tb_writer is not None:
                    add_metric(trainer.tb_writer, "train", "accuracy", correct_total / seen, trainer.state.global_step)

    # ------------------------------------------------------------------------------ checks
    def _classes_of_model(self, trainer: Trainer, inputs: torch.Tensor, targets: torch.Tensor) -> int:
        """The model's number of outputs, from one sample on the bare model (eval mode, forked RNG)."""
        model = trainer.unwrapped_model
        with side_forward(model, trainer.device), torch.no_grad():
            logits = logits_of(probe_outputs(trainer, model, inputs[:1], targets[:1]))
        outputs = int(logits.shape[1]) if logits is not None and logits.ndim == 2 else None
        if outputs is None:
            if self.num_classes is None:
                raise AugmentationError(
                    "MixUpCutMix cannot tell the number of classes: the model returns no (N, classes) logits; "
                    "pass num_classes"
                )
            return self.num_classes
        if self.num_classes is not None and self.num_classes != outputs:
            raise AugmentationError(
                f"MixUpCutMix(num_classes={self.num_classes}) but the model has {outputs} outputs: the soft targets "
                f"would not fit the loss; pass num_classes={outputs} (or None to take the model's)"
            )
        return outputs


def check_batch(inputs: Any, targets: Any) -> None:
    """Refuse, from shapes and dtypes alone (no device read), a batch MixUp/CutMix cannot mix."""
    if not isinstance(targets, torch.Tensor):
        raise AugmentationError(
            f"MixUpCutMix needs the targets as a tensor of class indices, got {type(targets).__name__}; "
            "override Trainer.unpack_batch to return (images, class indices)"
        )
    if targets.is_floating_point() or targets.dtype == torch.bool:
        raise AugmentationError(
            f"MixUpCutMix mixes class indices (torch.long, shape (N,)), got {targets.dtype} targets of shape "
            f"{tuple(targets.shape)}: regression, multi-label or already soft targets cannot be mixed into class "
            "probabilities; remove MixUpCutMix or give integer class labels"
        )
    if targets.ndim != 1:
        raise AugmentationError(
            f"MixUpCutMix mixes one class index per sample (shape (N,)), got targets of shape {tuple(targets.shape)}"
            f"{' (a segmentation mask?)' if targets.ndim >= 3 else ''}; MixUp/CutMix here are for classification: "
            "remove MixUpCutMix for this task"
        )
    if not isinstance(inputs, torch.Tensor) or inputs.ndim != 4 or not inputs.is_floating_point():
        shape = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
        raise AugmentationError(
            f"MixUpCutMix mixes float image batches (N, C, H, W), got {shape}; convert the images to float "
            "tensors in the dataset (ToImage + ToDtype) or remove MixUpCutMix"
        )
    if inputs.shape[0] != targets.shape[0]:
        raise AugmentationError(
            f"MixUpCutMix: {inputs.shape[0]} images but {targets.shape[0]} targets in the batch; they must match"
        )
