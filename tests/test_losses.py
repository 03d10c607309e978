"""Losses agree with their formulas and references, and keep finite gradients at the edges."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from callbacks_kit.losses import (
    BCEDiceLoss,
    DiceLoss,
    FocalLoss,
    JaccardLoss,
    LossInputError,
    bce_dice_loss,
    dice_loss,
    focal_loss,
    jaccard_loss,
)


def binary_case(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, 1, 5, 6, generator=g, dtype=torch.float64), torch.randint(0, 2, (3, 1, 5, 6), generator=g)


def multiclass_case(seed: int = 0, classes: int = 4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, classes, 5, 6, generator=g, dtype=torch.float64), torch.randint(
        0, classes, (3, 5, 6), generator=g
    )


def reference_overlap(probs, onehot, smooth, iou):
    """Per sample, mean over classes, written out with loops."""
    scores = []
    for n in range(probs.shape[0]):
        per_class = []
        for c in range(probs.shape[1]):
            p, t = probs[n, c].flatten(), onehot[n, c].flatten()
            inter = float((p * t).sum())
            total = float(p.sum() + t.sum())
            per_class.append(
                (inter + smooth) / (total - inter + smooth) if iou else (2 * inter + smooth) / (total + smooth)
            )
        scores.append(1 - sum(per_class) / len(per_class))
    return torch.tensor(scores, dtype=torch.float64)


@pytest.mark.parametrize("smooth", [0.0, 1.0])
def test_dice_and_jaccard_binary_match_the_formula(smooth):
    logits, target = binary_case()
    probs = torch.sigmoid(logits)
    for fn, iou in ((dice_loss, False), (jaccard_loss, True)):
        expected = reference_overlap(probs, target.double(), smooth, iou)
        torch.testing.assert_close(fn(logits, target, smooth=smooth, reduction="none"), expected)
        torch.testing.assert_close(fn(logits, target, smooth=smooth), expected.mean())
        torch.testing.assert_close(fn(logits, target, smooth=smooth, reduction="sum"), expected.sum())
    # (N, H, W) logits with an (N, H, W) float target: the same binary loss.
    torch.testing.assert_close(dice_loss(logits[:, 0], target[:, 0].double()), dice_loss(logits, target))


def test_dice_and_jaccard_multiclass_match_the_formula():
    logits, target = multiclass_case()
    probs, onehot = logits.softmax(1), F.one_hot(target, 4).movedim(-1, 1).double()
    torch.testing.assert_close(
        dice_loss(logits, target, reduction="none"), reference_overlap(probs, onehot, 1.0, False)
    )
    torch.testing.assert_close(
        jaccard_loss(logits, target, reduction="none"), reference_overlap(probs, onehot, 1.0, True)
    )


def test_dice_ignore_index_drops_those_pixels():
    logits, target = multiclass_case()
    ignored = target.clone()
    ignored[:, :2] = 255
    keep = ignored != 255
    # Dice over the kept pixels only, computed from the kept columns.
    expected = dice_loss(logits[:, :, 2:], target[:, 2:], reduction="none")
    torch.testing.assert_close(dice_loss(logits, ignored, ignore_index=255, reduction="none"), expected)
    assert keep.sum() < keep.numel()


def test_empty_masks_with_smoothing_score_perfectly():
    empty = torch.zeros(2, 1, 4, 4)
    confident_empty = torch.full((2, 1, 4, 4), -30.0)
    assert dice_loss(confident_empty, empty).item() == pytest.approx(0.0, abs=1e-6)
    assert jaccard_loss(confident_empty, empty).item() == pytest.approx(0.0, abs=1e-6)
    assert dice_loss(torch.full((2, 1, 4, 4), 30.0), empty).item() > 0.9  # predicting a shape that is not there


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_binary_focal_agrees_with_torchvision(reduction):
    logits, target = binary_case()
    ours = focal_loss(logits, target, alpha=0.25, gamma=2.0, reduction=reduction)
    theirs = sigmoid_focal_loss(logits, target.double(), alpha=0.25, gamma=2.0, reduction=reduction)
    torch.testing.assert_close(ours, theirs)
    no_alpha = sigmoid_focal_loss(logits, target.double(), alpha=-1, gamma=1.5, reduction=reduction)
    torch.testing.assert_close(focal_loss(logits, target, gamma=1.5, reduction=reduction), no_alpha)


def test_multiclass_focal_matches_its_formula_and_cross_entropy():
    logits, target = multiclass_case()
    alpha = [0.1, 0.2, 0.3, 0.4]
    p_t = logits.softmax(1).gather(1, target.unsqueeze(1)).squeeze(1)
    expected = -torch.tensor(alpha, dtype=torch.float64)[target] * (1 - p_t) ** 2 * p_t.log()
    torch.testing.assert_close(focal_loss(logits, target, alpha=alpha, reduction="none"), expected)
    # gamma=0 is cross-entropy, also with ignored pixels.
    target[0, 0] = -1
    torch.testing.assert_close(
        focal_loss(logits, target, gamma=0.0, ignore_index=-1), F.cross_entropy(logits, target, ignore_index=-1)
    )
    weighted = F.cross_entropy(logits, target, weight=torch.tensor(alpha).double(), ignore_index=-1, reduction="sum")
    torch.testing.assert_close(
        focal_loss(logits, target, alpha=alpha, gamma=0.0, ignore_index=-1, reduction="sum"), weighted
    )


def test_focal_ignore_index_averages_over_the_rest():
    logits, target = binary_case()
    marked = target.clone()
    marked[0] = 255
    full = focal_loss(logits[1:], target[1:], reduction="mean")
    torch.testing.assert_close(focal_loss(logits, marked, ignore_index=255), full)
    assert focal_loss(logits, marked, ignore_index=255, reduction="none")[0].abs().sum() == 0


def test_bce_dice_is_the_weighted_sum():
    logits, target = binary_case()
    bce = F.binary_cross_entropy_with_logits(logits, target.double())
    torch.testing.assert_close(bce_dice_loss(logits, target, 0.3, 0.7), 0.3 * bce + 0.7 * dice_loss(logits, target))
    logits, target = multiclass_case()
    ce = F.cross_entropy(logits, target)
    torch.testing.assert_close(bce_dice_loss(logits, target), ce + dice_loss(logits, target))


def test_modules_equal_functions():
    logits, target = multiclass_case()
    torch.testing.assert_close(DiceLoss(smooth=0.5)(logits, target), dice_loss(logits, target, smooth=0.5))
    torch.testing.assert_close(JaccardLoss()(logits, target), jaccard_loss(logits, target))
    torch.testing.assert_close(FocalLoss(gamma=1.0)(logits, target), focal_loss(logits, target, gamma=1.0))
    torch.testing.assert_close(BCEDiceLoss(dice_weight=2.0)(logits, target), bce_dice_loss(logits, target, 1.0, 2.0))


EDGES = {
    "all-empty masks": (torch.full((2, 1, 4, 4), -8.0), torch.zeros(2, 1, 4, 4)),
    "perfect binary": (torch.full((2, 1, 4, 4), 200.0), torch.ones(2, 1, 4, 4)),
    "perfect negative": (torch.full((2, 1, 4, 4), -200.0), torch.zeros(2, 1, 4, 4)),
    "perfect multiclass": (
        torch.tensor([200.0, -200.0, -200.0]).view(1, 3, 1, 1).expand(2, 3, 4, 4),
        torch.zeros(2, 4, 4, dtype=torch.long),
    ),
    "empty multiclass": (torch.zeros(2, 3, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long)),
}
LOSSES = {
    "dice": lambda x, t: dice_loss(x, t),
    "dice smooth=0": lambda x, t: dice_loss(x, t, smooth=0.0),
    "jaccard": lambda x, t: jaccard_loss(x, t),
    "jaccard smooth=0": lambda x, t: jaccard_loss(x, t, smooth=0.0),
    "focal": lambda x, t: focal_loss(x, t),
    "focal gamma=0.5": lambda x, t: focal_loss(x, t, gamma=0.5),
    "bce-dice": lambda x, t: bce_dice_loss(x, t),
}


@pytest.mark.parametrize("edge", EDGES)
@pytest.mark.parametrize("loss", LOSSES)
def test_gradients_are_finite_at_the_edges(edge, loss):
    logits, target = EDGES[edge]
    logits = logits.clone().requires_grad_(True)
    value = LOSSES[loss](logits, target)
    (grad,) = torch.autograd.grad(value, logits)
    assert torch.isfinite(value) and torch.isfinite(grad).all()


@pytest.mark.parametrize("loss", ["dice", "jaccard", "focal", "bce-dice"])
def test_gradients_match_finite_differences(loss):
    binary_logits, binary_target = binary_case()
    multi_logits, multi_target = multiclass_case(classes=3)
    for logits, target in (
        (binary_logits[:1, :, :3, :3], binary_target[:1, :, :3, :3]),
        (multi_logits[:1, :, :2, :3], multi_target[:1, :2, :3]),
    ):
        x = logits.clone().requires_grad_(True)
        assert torch.autograd.gradcheck(lambda x, t=target: LOSSES[loss](x, t), (x,))


def test_bad_input_is_a_clear_error():
    with pytest.raises(LossInputError, match="do not fit"):
        dice_loss(torch.randn(2, 3, 4, 4), torch.zeros(2, 5, 5, dtype=torch.long))
    with pytest.raises(LossInputError, match="class indices"):
        dice_loss(torch.randn(2, 3, 4, 4), torch.zeros(2, 4, 4))
    with pytest.raises(LossInputError, match="floating point"):
        focal_loss(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, dtype=torch.long))
    with pytest.raises(LossInputError, match="one alpha per class"):
        focal_loss(torch.randn(2, 3), torch.zeros(2, dtype=torch.long), alpha=0.25)
    with pytest.raises(LossInputError, match="reduction"):
        DiceLoss(reduction="avg")


# ------------------------------------------------------------------------------ SegmentationLoss by name
SEGMENTATION = ("ce", "dice", "bce-dice", "focal", "ce+dice")


def masks_with_ignored(seed: int = 0, classes: int = 4):
    logits, target = multiclass_case(seed, classes)
    target = target.clone()
    target[:, :2, :] = 255  # two rows of every mask ignored
    return logits.float(), target


@pytest.mark.parametrize("name", SEGMENTATION)
def test_every_segmentation_loss_leaves_out_the_ignored_pixels(name: str):
    from callbacks_kit.losses import SegmentationLoss

    logits, target = masks_with_ignored()
    logits.requires_grad_(True)
    loss = SegmentationLoss(name, ignore_index=255)({"out": logits, "aux": logits * 0}, target)
    loss.backward()
    assert logits.grad is not None and logits.grad[:, :, :2, :].abs().max() == 0  # nothing flows from ignored pixels
    # Whatever the model says there, and whatever class the mask would hold: the same loss.
    changed = logits.detach().clone()
    changed[:, :, :2, :] = torch.randn_like(changed[:, :, :2, :]) * 5
    other = target.clone()
    other[:, :2, :] = 255
    same = SegmentationLoss(name, ignore_index=255)(changed, other)
    assert float(same) == pytest.approx(float(loss.detach()), rel=1e-5)
    # The loss of the visible rows alone, the ignored rows cut away: the ignore index is as good as absent.
    cut = SegmentationLoss(name, ignore_index=None)(logits.detach()[:, :, 2:, :], target[:, 2:, :])
    assert float(cut) == pytest.approx(float(loss.detach()), rel=1e-5)


def test_segmentation_ce_is_pytorchs_with_the_ignore_index_and_zero_without_valid_pixels():
    from callbacks_kit.losses import SegmentationLoss

    logits, target = masks_with_ignored(2)
    expected = F.cross_entropy(logits, target, ignore_index=255)
    assert float(SegmentationLoss("ce")(logits, target)) == pytest.approx(float(expected), rel=1e-6)
    assert float(SegmentationLoss("ce+dice")(logits, target)) == pytest.approx(
        float(expected + dice_loss(logits, target, ignore_index=255)), rel=1e-6
    )
    nothing = torch.full_like(target, 255)
    for name in SEGMENTATION:  # a batch with no pixel to learn from: 0, never NaN (PyTorch's mean gives NaN)
        assert torch.isfinite(SegmentationLoss(name)(logits, nothing))
    with pytest.raises(LossInputError, match="choose one of ce, dice, bce-dice, focal, ce\\+dice"):
        SegmentationLoss("iou")
    with pytest.raises(LossInputError, match="takes logits or a dict with 'out'"):
        SegmentationLoss()({"aux": logits}, target)


def test_bce_dice_is_one_binary_problem_per_class():
    from callbacks_kit.losses import SegmentationLoss

    logits, target = multiclass_case(4, classes=3)
    logits = logits.float()
    onehot = F.one_hot(target, 3).movedim(-1, 1).float()
    bce = F.binary_cross_entropy_with_logits(logits, onehot)
    probs = logits.sigmoid()
    dice = 1 - ((2 * (probs * onehot).sum((2, 3)) + 1) / (probs.sum((2, 3)) + onehot.sum((2, 3)) + 1)).mean()
    loss = SegmentationLoss("bce-dice", ignore_index=None)(logits, target)
    assert float(loss) == pytest.approx(float(bce + dice), rel=1e-5)
