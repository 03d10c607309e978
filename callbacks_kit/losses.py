"""Segmentation and imbalance losses from logits: Dice, Jaccard (IoU), Focal and BCE-Dice.

Each is a plain function and an `nn.Module`. Shapes decide the mode:
- binary: logits `(N, 1, ...)` or the same shape as the target, target of 0s and 1s;
- multi-class: logits `(N, C, ...)` with `C > 1`, target `(N, ...)` of class indices.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from callbacks_kit.choices import SEGMENTATION_LOSSES as SEGMENTATION_LOSSES
from callbacks_kit.errors import LossInputError
from callbacks_kit.segmentation_metrics import segmentation_logits

REDUCTIONS = ("mean", "sum", "none")


# ------------------------------------------------------------------------------ Dice / Jaccard
def dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    smooth: float = 1.0,
    ignore_index: int | None = None,
    reduction: str = "mean",
    eps: float = 1e-7,
) -> torch.Tensor:
    """`1 - (2|P∩T| + smooth) / (|P| + |T| + smooth)` with soft probabilities, per sample.

    Multi-class Dice is the mean over classes (background included). `smooth` keeps the
    loss defined and its gradient finite on empty masks: an empty prediction of an empty
    mask scores 1 (loss 0); with `smooth=0` it scores 0. Pixels whose target is
    `ignore_index` are left out. `reduction` acts over samples ("none" gives shape `(N,)`).
    """
    inter, total = _overlaps(logits, target, ignore_index, reduction)
    score = (2 * inter + smooth) / (total + smooth).clamp_min(eps)
    return _reduce(1 - score.mean(dim=1), reduction)


def jaccard_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    smooth: float = 1.0,
    ignore_index: int | None = None,
    reduction: str = "mean",
    eps: float = 1e-7,
) -> torch.Tensor:
    """`1 - (|P∩T| + smooth) / (|P∪T| + smooth)` (soft IoU), per sample; as `dice_loss` otherwise."""
    inter, total = _overlaps(logits, target, ignore_index, reduction)
    score = (inter + smooth) / (total - inter + smooth).clamp_min(eps)
    return _reduce(1 - score.mean(dim=1), reduction)


def _overlaps(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int | None, reduction: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample and class: `sum(p * t)` and `sum(p) + sum(t)`, each `(N, C)`."""
    _check_reduction(reduction)
    if _is_binary(logits, target):
        probs = torch.sigmoid(logits.reshape(target.shape)).unsqueeze(1)
        valid = _valid(target, ignore_index).unsqueeze(1)
        onehot = target.unsqueeze(1).to(probs.dtype) * valid
    else:
        probs = logits.softmax(dim=1)
        valid = _valid(target, ignore_index).unsqueeze(1)
        classes = target.masked_fill(~valid.squeeze(1), 0) if ignore_index is not None else target
        onehot = F.one_hot(classes, logits.shape[1]).movedim(-1, 1).to(probs.dtype) * valid
    probs = probs * valid
    dims = tuple(range(2, probs.ndim))
    inter = (probs * onehot).sum(dims) if dims else probs * onehot
    total = (probs.sum(dims) + onehot.sum(dims)) if dims else probs + onehot
    return inter, total


# ------------------------------------------------------------------------------ Focal
def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    alpha: float | Sequence[float] | torch.Tensor | None = None,
    gamma: float = 2.0,
    ignore_index: int | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Focal loss `-alpha_t (1 - p_t)^gamma log(p_t)` (Lin et al., 2017), per element.

    Binary: sigmoid of the logits, `alpha` the weight of positives (`1 - alpha` for
    negatives); `alpha=0.25` matches `torchvision.ops.sigmoid_focal_loss`. Multi-class:
    softmax, `alpha` one weight per class. `gamma=0` is (weighted) cross-entropy. Elements
    whose target is `ignore_index` count for nothing, and "mean" averages the others.
    """
    _check_reduction(reduction)
    if gamma < 0:
        raise LossInputError(f"gamma must be >= 0, got {gamma}")
    valid = _valid(target, ignore_index)
    if _is_binary(logits, target):
        logits = logits.reshape(target.shape)
        t = target.to(logits.dtype) * valid
        log_p, log_not_p = F.logsigmoid(logits), F.logsigmoid(-logits)
        ce = -(t * log_p + (1 - t) * log_not_p)
        # 1 - p_t without cancellation: exact and nonzero even for confident predictions.
        miss = t * log_not_p.exp() + (1 - t) * log_p.exp()
        weight = 1.0 if alpha is None else _binary_alpha(alpha) * t + (1 - _binary_alpha(alpha)) * (1 - t)
    else:
        classes = target.masked_fill(~valid, 0) if ignore_index is not None else target
        log_p_t = logits.log_softmax(dim=1).gather(1, classes.unsqueeze(1)).squeeze(1)
        ce = -log_p_t
        miss = -torch.expm1(log_p_t)
        weight = 1.0 if alpha is None else _class_alpha(alpha, logits)[classes]
    modulating = miss.clamp_min(torch.finfo(miss.dtype).tiny) ** gamma if gamma else 1.0
    loss = weight * modulating * ce * valid
    if reduction == "mean":
        return loss.sum() / valid.sum().clamp_min(1)
    return loss.sum() if reduction == "sum" else loss


def _binary_alpha(alpha: float | Sequence[float] | torch.Tensor) -> float:
    if isinstance(alpha, (int, float)) and 0 <= alpha <= 1:
        return float(alpha)
    raise LossInputError(f"binary focal loss takes alpha in [0, 1] (the weight of positives), got {alpha!r}")


def _class_alpha(alpha: float | Sequence[float] | torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    weights = torch.as_tensor(alpha, dtype=logits.dtype, device=logits.device)
    if weights.ndim != 1 or weights.numel() != logits.shape[1]:
        raise LossInputError(f"multi-class focal loss takes one alpha per class ({logits.shape[1]}), got {alpha!r}")
    return weights


# ------------------------------------------------------------------------------ BCE-Dice
def bce_dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    bce_weight: float = 1.0,
    dice_weight: float = 1.0,
    smooth: float = 1.0,
    ignore_index: int | None = None,
) -> torch.Tensor:
    """`bce_weight * BCE + dice_weight * Dice`: BCE for pixel accuracy, Dice for overlap.

    For multi-class logits the BCE term is the softmax cross-entropy.
    """
    dice = dice_loss(logits, target, smooth=smooth, ignore_index=ignore_index)
    valid = _valid(target, ignore_index)
    if _is_binary(logits, target):
        element = F.binary_cross_entropy_with_logits(
            logits.reshape(target.shape), (target * valid).to(logits.dtype), reduction="none"
        )
        bce = (element * valid).sum() / valid.sum().clamp_min(1)
    else:
        bce = F.cross_entropy(logits, target, ignore_index=-100 if ignore_index is None else ignore_index)
    return bce_weight * bce + dice_weight * dice


# ------------------------------------------------------------------------------ modules
class DiceLoss(nn.Module):
    """`dice_loss` as a module; see there."""

    def __init__(self, smooth: float = 1.0, ignore_index: int | None = None, reduction: str = "mean") -> None:
        super().__init__()
        _check_reduction(reduction)
        self.smooth, self.ignore_index, self.reduction = smooth, ignore_index, reduction

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss of `logits` against `target`."""
        return dice_loss(logits, target, self.smooth, self.ignore_index, self.reduction)


class JaccardLoss(DiceLoss):
    """`jaccard_loss` (soft IoU) as a module; see there."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss of `logits` against `target`."""
        return jaccard_loss(logits, target, self.smooth, self.ignore_index, self.reduction)


class FocalLoss(nn.Module):
    """`focal_loss` as a module; see there."""

    def __init__(
        self,
        alpha: float | Sequence[float] | torch.Tensor | None = None,
        gamma: float = 2.0,
        ignore_index: int | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        _check_reduction(reduction)
        self.alpha, self.gamma, self.ignore_index, self.reduction = alpha, gamma, ignore_index, reduction

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss of `logits` against `target`."""
        return focal_loss(logits, target, self.alpha, self.gamma, self.ignore_index, self.reduction)


class BCEDiceLoss(nn.Module):
    """`bce_dice_loss` as a module; see there."""

    def __init__(
        self,
        bce_weight: float = 1.0,
        dice_weight: float = 1.0,
        smooth: float = 1.0,
        ignore_index: int | None = None,
    ) -> None:
        super().__init__()
        self.bce_weight, self.dice_weight, self.smooth, self.ignore_index = (
            bce_weight,
            dice_weight,
            smooth,
            ignore_index,
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss of `logits` against `target`."""
        return bce_dice_loss(logits, target, self.bce_weight, self.dice_weight, self.smooth, self.ignore_index)


class SegmentationLoss(nn.Module):
    """A segmentation loss by name, on `(N, C, H, W)` logits (or a model's `{"out": logits}`) and `(N, H, W)` masks.

    - "ce": cross-entropy, averaged over the pixels that are not ignored (0 for a batch without any);
    - "dice": soft Dice (`dice_loss`), the mean over classes;
    - "ce+dice": the two added;
    - "bce-dice": one-vs-rest: a sigmoid binary cross-entropy per class channel against the
      one-hot mask, plus the soft Dice of each channel's sigmoid (`bce_dice_loss` per channel);
    - "focal": multi-class focal loss, gamma 2 (`focal_loss`).

    Every one leaves out the pixels whose target is `ignore_index`. One output channel is
    binary segmentation (targets 0/1): "ce" is then the binary cross-entropy.

    Args:
        name: One of `SEGMENTATION_LOSSES`.
        ignore_index: Target value that counts nowhere (255: the void label of VOC masks); None: none.
    """

    def __init__(self, name: str = "ce", ignore_index: int | None = 255) -> None:
        super().__init__()
        if name not in SEGMENTATION_LOSSES:
            raise LossInputError(f"segmentation loss {name!r}: choose one of {', '.join(SEGMENTATION_LOSSES)}")
        self.name, self.ignore_index = name, ignore_index

    def forward(self, outputs: object, target: torch.Tensor) -> torch.Tensor:
        """The loss of the outputs' logits against the masks."""
        logits = segmentation_logits(outputs)
        if logits is None:
            raise LossInputError(
                f"SegmentationLoss takes logits or a dict with 'out' (torchvision's segmentation models), got "
                f"{type(outputs).__name__}"
            )
        binary = logits.shape[1] == 1
        if self.name == "ce":
            return _binary_ce(logits, target, self.ignore_index) if binary else _ce(logits, target, self.ignore_index)
        if self.name == "dice":
            return dice_loss(logits, target, ignore_index=self.ignore_index)
        if self.name == "focal":
            return focal_loss(logits, target, ignore_index=self.ignore_index)
        if binary:  # "ce+dice" and "bce-dice" are one thing for one channel
            return bce_dice_loss(logits, target, ignore_index=self.ignore_index)
        if self.name == "ce+dice":
            return _ce(logits, target, self.ignore_index) + dice_loss(logits, target, ignore_index=self.ignore_index)
        return _one_vs_rest_bce_dice(logits, target, self.ignore_index)

    def extra_repr(self) -> str:
        """The loss's name and ignore index, in the module's repr."""
        return f"name={self.name!r}, ignore_index={self.ignore_index}"


def _ce(logits: torch.Tensor, target: torch.Tensor, ignore_index: int | None) -> torch.Tensor:
    _is_binary(logits, target)  # a clear error for shapes that do not fit
    total = F.cross_entropy(
        logits, target, ignore_index=-100 if ignore_index is None else ignore_index, reduction="sum"
    )
    return total / _valid(target, ignore_index).sum().clamp_min(1)


def _binary_ce(logits: torch.Tensor, target: torch.Tensor, ignore_index: int | None) -> torch.Tensor:
    return bce_dice_loss(logits, target, dice_weight=0.0, ignore_index=ignore_index)


def _one_vs_rest_bce_dice(logits: torch.Tensor, target: torch.Tensor, ignore_index: int | None) -> torch.Tensor:
    _is_binary(logits, target)
    valid = _valid(target, ignore_index)
    classes = target.masked_fill(~valid, 0) if ignore_index is not None else target
    onehot = F.one_hot(classes, logits.shape[1]).movedim(-1, 1).to(logits.dtype)
    if ignore_index is not None:
        onehot = onehot.masked_fill(~valid.unsqueeze(1), float(ignore_index))  # ignored in every channel
    # Each (sample, class) plane is one binary problem: its BCE over valid pixels and its own Dice.
    return bce_dice_loss(logits.flatten(0, 1), onehot.flatten(0, 1), ignore_index=ignore_index)


# ------------------------------------------------------------------------------ checks
def _is_binary(logits: torch.Tensor, target: torch.Tensor) -> bool:
    """Binary or multi-class, from the shapes; a clear error when they do not fit."""
    if not isinstance(logits, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise LossInputError("logits and target must be tensors")
    if not logits.is_floating_point():
        raise LossInputError(f"logits must be floating point (raw scores before sigmoid/softmax), got {logits.dtype}")
    if logits.shape == target.shape or (logits.ndim == target.ndim + 1 and logits.shape[1] == 1):
        if logits.ndim == target.ndim + 1 and logits.shape[:1] + logits.shape[2:] != target.shape:
            raise LossInputError(f"binary logits {tuple(logits.shape)} do not match target {tuple(target.shape)}")
        return True
    if logits.ndim == target.ndim + 1 and logits.shape[:1] + logits.shape[2:] == target.shape:
        if target.is_floating_point() or target.dtype == torch.bool:
            raise LossInputError(f"multi-class targets must be class indices (torch.long), got {target.dtype}")
        return False
    raise LossInputError(
        f"logits {tuple(logits.shape)} and target {tuple(target.shape)} do not fit: binary needs logits (N, 1, ...) "
        "or the target's shape; multi-class needs logits (N, C, ...) and a target (N, ...) of class indices"
    )


def _valid(target: torch.Tensor, ignore_index: int | None) -> torch.Tensor:
    if ignore_index is None:
        return torch.ones_like(target, dtype=torch.bool)
    return target != ignore_index


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise LossInputError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def _reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    return values.mean() if reduction == "mean" else values.sum() if reduction == "sum" else values
