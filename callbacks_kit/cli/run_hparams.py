"""What the hparams dashboard shows of a `train` run: what defines it, and every flag the user set."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from callbacks_kit.inspection.hparams import HParamValue, hparam_value

# Flags that say where a run's files go or how it prints, not what it trains.
NOT_HPARAMS = ("command", "log_dir", "checkpoint_dir", "no_progress")


def user_flags(args: argparse.Namespace, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The flags given a value other than their default; read before any check fills one in."""
    return {
        name: value
        for name, value in vars(args).items()
        if name in defaults and name not in NOT_HPARAMS and value != defaults[name]
    }


def run_hparams(args: argparse.Namespace, given: Mapping[str, Any], image_size: int) -> dict[str, HParamValue]:
    """The run's hyperparameters: what defines it, always (with the values it trains with), then `given`.

    Always: model, weights, data, image size, lr, batch size, epochs, scheduler, augment,
    EMA decay, MixUp and CutMix alpha (0: off), label smoothing, and whether the backbone
    starts frozen, so every run has the same columns to compare and filter by. Then each
    flag in `given` (`user_flags`) not already there.
    """
    folder = args.data or args.labels
    defining: dict[str, Any] = {
        "model": args.model,
        "weights": args.weights or "none",
        "data": folder or "shapes",
        "image_size": image_size,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "scheduler": args.scheduler,
        "augment": args.augment or ("basic" if folder else "none"),  # build_job's defaults
        "ema": args.ema or 0.0,
        "mixup": args.mixup or 0.0,
        "cutmix": args.cutmix or 0.0,
        "label_smoothing": args.label_smoothing,
        "freeze_backbone": bool(args.freeze_backbone or args.unfreeze_at),
    }
    values = {**defining, **{name: value for name, value in given.items() if name not in defining}}
    return {name: v for name, v in ((name, hparam_value(value)) for name, value in values.items()) if v is not None}
