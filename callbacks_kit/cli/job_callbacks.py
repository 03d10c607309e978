"""The main job's callbacks, built from its flags: one function per feature, which checks its values first.

The flags themselves are added in `flags` (those `lr-find` takes too) and `train_flags`.
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
from collections.abc import Sequence

import torch
from torch.optim import lr_scheduler as schedulers

from callbacks_kit.callbacks.base import Callback
from callbacks_kit.callbacks.batch_grid import BatchGrid
from callbacks_kit.callbacks.batch_norm_stats import BatchNormRecalibration
from callbacks_kit.callbacks.class_report import ClassReport
from callbacks_kit.callbacks.confusion_matrix import ConfusionMatrix
from callbacks_kit.callbacks.early_stopping import EarlyStopping
from callbacks_kit.callbacks.ema import EMA
from callbacks_kit.callbacks.embeddings import Embeddings
from callbacks_kit.callbacks.feature_maps import FeatureMaps
from callbacks_kit.callbacks.freeze_unfreeze import FreezeUnfreeze
from callbacks_kit.callbacks.grad_cam import GradCAM
from callbacks_kit.callbacks.kernel_grid import KernelGrid
from callbacks_kit.callbacks.layer_stats import LayerStats
from callbacks_kit.callbacks.lr_scheduler import LearningRateScheduler, SchedulerFactory
from callbacks_kit.callbacks.mix import MixUpCutMix
from callbacks_kit.callbacks.model_checkpoint import ModelCheckpoint
from callbacks_kit.callbacks.preemption_handler import PreemptionHandler
from callbacks_kit.callbacks.profiler import Profiler
from callbacks_kit.callbacks.terminate_on_nan import TerminateOnNaN
from callbacks_kit.callbacks.top_losses import TopLosses
from callbacks_kit.callbacks.weight_histograms import WeightHistograms
from callbacks_kit.cli.flags import label_smoothing
from callbacks_kit.errors import AugmentationError, CLIError


def inspection_callbacks(args: argparse.Namespace, classes: Sequence[str]) -> list[Callback]:
    """Histograms, kernels, feature maps, Grad-CAM and the confusion matrix at the main job's cadences."""
    if args.no_inspection:
        return []
    for name in ("hist_every", "images_every", "probe_images"):
        if getattr(args, name) < (0 if name == "hist_every" else 1):
            raise CLIError(f"--{name.replace('_', '-')} cannot be {getattr(args, name)}")
    return [
        WeightHistograms(every_n_steps=args.hist_every or None, grads=not args.no_grad_hist, include=args.hist_include),
        KernelGrid(args.kernel_layers, every_n_epochs=args.images_every),
        FeatureMaps(args.feature_layers, every_n_epochs=args.images_every),
        GradCAM(
            args.gradcam_layer, num_images=args.probe_images, every_n_epochs=args.images_every, class_names=classes
        ),
        ConfusionMatrix(class_names=classes),
    ]


def error_analysis_callbacks(args: argparse.Namespace, classes: Sequence[str]) -> list[Callback]:
    """TopLosses and ClassReport unless --no-inspection; Embeddings when --embeddings N asks for it."""
    for name in ("top_losses", "embeddings"):
        if getattr(args, name) < 0:
            raise CLIError(f"--{name.replace('_', '-')} must be 0 (off) or more samples, got {getattr(args, name)}")
    callbacks: list[Callback] = []
    if not args.no_inspection:
        if args.top_losses:
            callbacks.append(TopLosses(args.top_losses, class_names=classes, gradcam=args.gradcam_layer or True))
        if not args.no_class_report:
            callbacks.append(ClassReport(class_names=classes))
    if args.embeddings:
        callbacks.append(Embeddings(args.embeddings, class_names=classes))
    return callbacks


def training_view_callbacks(args: argparse.Namespace, classes: Sequence[str]) -> list[Callback]:
    """LayerStats and BatchGrid at the main job's cadences (both within 3% of an epoch)."""
    if args.no_inspection:
        return []
    for name in ("layer_stats_every", "batch_grid_every", "batch_grid_images"):
        if getattr(args, name) < 0:
            raise CLIError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(args, name)}")
    if args.layer_stats_layers is not None and not args.layer_stats_every:
        raise CLIError("--layer-stats-layers chooses the layers of --layer-stats-every, which is 0 (off)")
    callbacks: list[Callback] = []
    if args.layer_stats_every:
        callbacks.append(LayerStats(every_n_steps=args.layer_stats_every, layers=args.layer_stats_layers))
    if args.batch_grid_images:
        callbacks.append(
            BatchGrid(
                every_n_epochs=args.batch_grid_every or None, num_images=args.batch_grid_images, class_names=classes
            )
        )
    return callbacks


def finetune_callbacks(args: argparse.Namespace, steps_per_epoch: int) -> list[Callback]:
    """A LearningRateScheduler, a BatchNormRecalibration and, when asked, a FreezeUnfreeze on the backbone.

    The schedules get the exact optimizer steps per epoch from the trainer at fit start.
    """
    if args.warmup < 0:
        raise CLIError(f"--warmup must be 0 or more optimizer steps, got {args.warmup}")
    if args.backbone_lr_factor is not None and not (args.freeze_backbone or args.unfreeze_at):
        raise CLIError("--backbone-lr-factor sets the LR at unfreezing: use it with --unfreeze-at")
    late = [epoch for epoch in args.unfreeze_at or [] if epoch >= args.epochs]
    if late:
        raise CLIError(f"--unfreeze-at {late[0]} is not before --epochs {args.epochs}: that part would never train")
    epochs = args.epochs

    def onecycle(opt: torch.optim.Optimizer, steps_per_epoch: int) -> schedulers.OneCycleLR:
        # Each group peaks at its own LR (on resume: at the peak it was given then).
        peaks = [group.get("max_lr", group["lr"]) for group in opt.param_groups]
        # pct_start 0.3 (PyTorch's default): 0.3 * steps is never exactly 1, where OneCycleLR divides by zero.
        return schedulers.OneCycleLR(opt, peaks, epochs=epochs, steps_per_epoch=steps_per_epoch, pct_start=0.3)

    factories: dict[str, SchedulerFactory] = {
        "onecycle": onecycle,
        "cosine": lambda opt, steps_per_epoch: schedulers.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch),
        "linear": lambda opt, steps_per_epoch: schedulers.PolynomialLR(opt, total_iters=epochs * steps_per_epoch),
        "step": lambda opt: schedulers.StepLR(opt, step_size=max(1, epochs // 3), gamma=0.1),
        "plateau": lambda opt: schedulers.ReduceLROnPlateau(opt, factor=0.1, patience=1),
    }
    callbacks: list[Callback] = []
    if args.scheduler != "none" or args.warmup:
        interval = "epoch" if args.scheduler in ("step", "plateau") else "step"
        factory = factories.get(args.scheduler)
        callbacks.append(LearningRateScheduler(factory, interval=interval, warmup=args.warmup, warmup_interval="step"))
    if args.bn_recalibration < 0:
        raise CLIError(f"--bn-recalibration must be 0 (off) or more training batches, got {args.bn_recalibration}")
    if args.bn_recalibration:
        callbacks.append(BatchNormRecalibration(args.bn_recalibration))
    if args.freeze_backbone or args.unfreeze_at:
        when = args.unfreeze_at[0] if args.unfreeze_at and len(args.unfreeze_at) == 1 else args.unfreeze_at
        callbacks.append(FreezeUnfreeze(unfreeze_at=when, lr_factor=args.backbone_lr_factor))
    return callbacks


def ema_callbacks(args: argparse.Namespace) -> list[Callback]:
    """An `EMA` when `--ema` is given; its other flags without it are refused (they would be ignored)."""
    if args.ema is None:
        given = [
            flag
            for flag, value in (("--ema-every", args.ema_every != 1), ("--ema-buffers", args.ema_buffers != "average"))
            if value
        ]
        if given:
            raise CLIError(f"{' and '.join(given)} set how the EMA is kept, and there is none: add --ema DECAY")
        return []
    if not 0 < args.ema < 1:  # also refuses NaN
        raise CLIError(f"--ema DECAY must be strictly between 0 and 1, e.g. 0.999 or 0.9999; got {args.ema}")
    if args.ema_every < 1:
        raise CLIError(f"--ema-every must be at least 1 optimizer step, got {args.ema_every}")
    return [EMA(args.ema, every_n_steps=args.ema_every, buffers=args.ema_buffers)]


# The metrics of each validation of the main job (val/*, and val_ema/* with --ema), by task.
VALIDATED = {"classification": ("accuracy", "loss"), "segmentation": ("mean_iou", "pixel_accuracy", "loss")}


def monitored(args: argparse.Namespace) -> tuple[str, str]:
    """`--monitor` and its mode, checked: the metric that picks the best checkpoint and that early stopping watches.

    By default the accuracy (segmentation: the mean IoU) of the last validation there is:
    `val_ema/accuracy` with `--ema` (the averaged weights are what the run is for), else
    `val/accuracy`. `--monitor-mode auto` is "min" for a metric whose name contains "loss"
    and "max" otherwise.
    """
    task = getattr(args, "task", "classification")
    prefixes = ["val", "val_ema"] if args.ema is not None else ["val"]
    metric = args.monitor or f"{prefixes[-1]}/{VALIDATED[task][0]}"
    known = [f"{prefix}/{name}" for prefix in prefixes for name in VALIDATED[task]]
    if metric not in known:
        if args.ema is None and metric.startswith("val_ema/"):
            raise CLIError(
                f"--monitor {metric} ranks the EMA's averaged weights, and this run keeps none: add --ema DECAY "
                f"(e.g. --ema 0.999), or monitor one of {', '.join(known)}"
            )
        close = difflib.get_close_matches(metric, known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise CLIError(f"--monitor {metric} is not a metric this run validates{hint}; choose one of {', '.join(known)}")
    if args.monitor_mode != "auto":
        return metric, args.monitor_mode
    return metric, "min" if "loss" in metric.rsplit("/", 1)[-1] else "max"


def checkpoint_callbacks(args: argparse.Namespace, run_dir: str) -> list[Callback]:
    """Keep the best model by `--monitor` and the last; stop cleanly on SIGTERM/SIGINT/SIGUSR1."""
    if args.resume in ("last", "auto") and not (args.log_dir or args.checkpoint_dir):
        raise CLIError(
            f"--resume {args.resume} continues the run of --log-dir (or of --checkpoint-dir), and neither was given; "
            f"pass the folder of the run to continue, e.g. --log-dir runs/20250101-120000 --resume {args.resume}"
        )
    if args.early_stop_patience is not None and args.early_stop_patience < 1:
        raise CLIError(f"--early-stop-patience must be at least 1, got {args.early_stop_patience}")
    steps, minutes = args.save_every_steps, args.save_every_minutes
    if steps is not None and steps < 1:
        raise CLIError(f"--save-every-steps must be at least 1 optimizer step, got {steps}")
    if minutes is not None and not 0 < minutes < math.inf:
        raise CLIError(f"--save-every-minutes must be a number of minutes above 0, e.g. 30 or 0.5; got {minutes}")
    directory = args.checkpoint_dir or os.path.join(run_dir, "checkpoints")
    metric, mode = monitored(args)
    callbacks: list[Callback] = [
        ModelCheckpoint(directory, monitor=metric, mode=mode, every_n_steps=steps, every_n_minutes=minutes),
        TerminateOnNaN(),
        PreemptionHandler(("SIGTERM", "SIGINT", "SIGUSR1")),
    ]
    if args.early_stop_patience is not None:
        callbacks.append(EarlyStopping(metric, patience=args.early_stop_patience, mode=mode))
    return callbacks


def recipe_callbacks(args: argparse.Namespace) -> list[Callback]:
    """A `MixUpCutMix` when --mixup or --cutmix is given (its own checks, as CLI errors); the flags are checked."""
    if args.no_flip and args.augment == "none":
        raise CLIError("--no-flip removes the flip of --augment, and --augment none has none: drop one of them")
    label_smoothing(args)
    mixing = args.mixup is not None or args.cutmix is not None
    if not mixing:
        given = [
            flag
            for flag, value in (("--mix-prob", args.mix_prob != 1.0), ("--mix-stop-epoch", args.mix_stop_epoch))
            if value
        ]
        if given:
            raise CLIError(f"{' and '.join(given)} set how batches are mixed: add --mixup ALPHA and/or --cutmix ALPHA")
        return []
    if args.mix_stop_epoch is not None and args.mix_stop_epoch >= args.epochs:
        raise CLIError(
            f"--mix-stop-epoch {args.mix_stop_epoch} is not before --epochs {args.epochs}: mixing would never stop; "
            "drop it to mix to the end"
        )
    try:
        return [MixUpCutMix(args.mixup, args.cutmix, p=args.mix_prob, stop_epoch=args.mix_stop_epoch)]
    except AugmentationError as exc:
        raise CLIError(_as_flags(str(exc))) from exc


def _as_flags(message: str) -> str:
    """A MixUpCutMix message in the words of the command line."""
    for name, flag in (
        ("mixup_alpha", "--mixup"),
        ("cutmix_alpha", "--cutmix"),
        ("stop_epoch", "--mix-stop-epoch"),
        ("p is", "--mix-prob is"),
    ):
        message = message.replace(name, flag)
    message = message.replace("leave MixUp/CutMix out", "drop --mixup/--cutmix")
    return message.replace("pass None to turn that transform off", "leave the flag out to turn that transform off")


def profiling_callbacks(args: argparse.Namespace, steps_per_epoch: int) -> list[Callback]:
    """A `Profiler` of --profile-steps steps after 1 skipped and 1 of warm-up, when asked."""
    steps = args.profile_steps
    if steps < 0:
        raise CLIError(f"--profile-steps must be 0 (off) or a number of optimizer steps, got {steps}")
    if not steps:
        return []
    wait, warmup = 1, 1
    planned = args.epochs * steps_per_epoch
    if not args.resume and wait + warmup + steps > planned:
        raise CLIError(
            f"--profile-steps {steps} needs {wait + warmup + steps} optimizer steps ({wait} skipped, {warmup} of "
            f"warm-up), and this run has {planned}: lower it, or train longer (--epochs, --train-samples)"
        )
    return [Profiler(wait=wait, warmup=warmup, active=steps)]
