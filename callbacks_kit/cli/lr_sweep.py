"""The LR range test of `--lr-find-*`: `lr-find` runs it, `train --lr auto` trains with its suggestion.

The sweep itself, with its freezing and its TensorBoard run, is `lr_finder.range_test`.
"""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

from torch.utils.data import DataLoader

from callbacks_kit.errors import CLIError
from callbacks_kit.finetune import backbone_blocks
from callbacks_kit.lr_finder import LRFinder, LRFinderResult, range_test

if TYPE_CHECKING:
    from callbacks_kit.trainer import Trainer


def lr_finder(args: argparse.Namespace) -> LRFinder:
    """The `LRFinder` of `--lr-find-*`, its range checked before any data is loaded."""
    low, high = args.lr_find_min, args.lr_find_max
    for flag, value in (("--lr-find-min", low), ("--lr-find-max", high)):
        if not 0 < value < float("inf"):
            raise CLIError(f"{flag} must be a positive finite LR, got {value}")
    if low >= high:
        raise CLIError(
            f"--lr-find-min {low:g} is not below --lr-find-max {high:g}: the sweep goes from the minimum up to the "
            "maximum; e.g. --lr-find-min 1e-7 --lr-find-max 10"
        )
    if args.lr_find_steps < 5:
        raise CLIError(f"--lr-find-steps must be at least 5 (100 is usual), got {args.lr_find_steps}")
    return LRFinder(low, high, args.lr_find_steps)


def sweep_lr(args: argparse.Namespace, trainer: Trainer, loader: DataLoader, log_dir: str) -> LRFinderResult:
    """The LR range test of `--lr-find-*` on `trainer`, frozen as `--freeze-backbone` trains first.

    The curve, the scalars and the suggestion go to a TensorBoard run in `log_dir` (main
    process). A line says when the sweep starts and when it is done, a progress bar shows
    its steps (unless --no-progress), and the summary is printed.
    """
    model = trainer.unwrapped_model
    frozen = backbone_blocks(model) if args.freeze_backbone or args.unfreeze_at else []
    finder = lr_finder(args)
    trainer.print(
        f"LR range test: sweeping the LR from {finder.min_lr:g} to {finder.max_lr:g} over up to {finder.steps} "
        f"steps of one batch each{' with the backbone frozen' if frozen else ''}; it stops early when the loss "
        "diverges"
    )
    start = time.perf_counter()
    result = range_test(finder, trainer, loader, frozen=frozen, log_dir=log_dir, progress=not args.no_progress)
    trainer.print(
        f"LR range test done in {time.perf_counter() - start:.0f} s ({len(result.lrs)} steps); the weights, "
        "optimizer and random state are as they were before it"
    )
    trainer.print(result.summary())
    return result


def auto_lr(args: argparse.Namespace, trainer: Trainer, loader: DataLoader, log_dir: str) -> float:
    """`--lr auto`: the LR range test's suggestion, set on every param group and printed."""
    result = sweep_lr(args, trainer, loader, log_dir)
    if result.suggestion is None:
        raise CLIError(
            f"--lr auto: the LR range test gave no suggestion ({'; '.join(result.notes)}); widen "
            "--lr-find-min/--lr-find-max, or pass --lr explicitly"
        )
    result.apply(trainer.optimizer)
    trainer.print(f"--lr auto: training with LR {result.suggestion:.3g} (curve in {log_dir})")
    return result.suggestion
