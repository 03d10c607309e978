"""The main job's optional features: each adds its command-line options and builds its callbacks."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import torch
from torch.optim import lr_scheduler as schedulers

from callbacks_kit.callbacks.base import Callback
from callbacks_kit.callbacks.batch_grid import BatchGrid
from callbacks_kit.callbacks.confusion_matrix import ConfusionMatrix
from callbacks_kit.callbacks.early_stopping import EarlyStopping
from callbacks_kit.callbacks.feature_maps import FeatureMaps
from callbacks_kit.callbacks.freeze_unfreeze import FreezeUnfreeze
from callbacks_kit.callbacks.grad_cam import GradCAM
from callbacks_kit.callbacks.kernel_grid import KernelGrid
from callbacks_kit.callbacks.layer_stats import LayerStats
from callbacks_kit.callbacks.lr_scheduler import LRScheduler
from callbacks_kit.callbacks.model_checkpoint import ModelCheckpoint
from callbacks_kit.callbacks.preemption_handler import PreemptionHandler
from callbacks_kit.callbacks.terminate_on_nan import TerminateOnNaN
from callbacks_kit.callbacks.weight_histograms import WeightHistograms
from callbacks_kit.errors import CLIError


# Each feature adds its options and its callbacks in its own pair of functions.
def add_inspection_args(parser: argparse.ArgumentParser) -> None:
    """TensorBoard inspection options (histograms, images, Grad-CAM...)."""
    group = parser.add_argument_group("TensorBoard inspection (layer names as in model.named_modules())")
    group.add_argument("--no-inspection", action="store_true", help="scalars, graph and hparams only")
    group.add_argument(
        "--hist-every",
        type=int,
        default=0,
        metavar="N",
        help="optimizer steps between weight/gradient histograms; 0: at each epoch end",
    )
    group.add_argument("--no-grad-hist", action="store_true", help="weight histograms only")
    group.add_argument("--hist-include", metavar="REGEX", help="only parameters whose name matches (e.g. 'conv|fc')")
    group.add_argument(
        "--images-every", type=int, default=1, metavar="N", help="epochs between kernels, feature maps, Grad-CAM"
    )
    group.add_argument("--kernel-layers", nargs="+", metavar="NAME", help="conv layers shown as kernel grids (first)")
    group.add_argument(
        "--feature-layers", nargs="+", metavar="NAME", help="layers whose feature maps are shown (4 spread stages)"
    )
    group.add_argument("--gradcam-layer", metavar="NAME", help="Grad-CAM target layer (last conv block)")
    group.add_argument("--probe-images", type=int, default=8, metavar="N", help="validation images for Grad-CAM")


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


def add_training_view_args(parser: argparse.ArgumentParser) -> None:
    """Layer health and training-batch options."""
    group = parser.add_argument_group("layer health and training batches (off with --no-inspection)")
    group.add_argument(
        "--layer-stats-every",
        type=int,
        default=20,
        metavar="N",
        help="optimizer steps between per-layer gradient norms, update ratios and activation statistics; 0: off",
    )
    group.add_argument(
        "--layer-stats-layers", metavar="REGEX", help="layers whose statistics are logged (every conv and linear)"
    )
    group.add_argument(
        "--batch-grid-every",
        type=int,
        default=0,
        metavar="N",
        help="epochs between grids of the first training batch; 0: the first epoch only",
    )
    group.add_argument("--batch-grid-images", type=int, default=16, metavar="N", help="images in the grid; 0: off")


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


def add_finetune_args(parser: argparse.ArgumentParser) -> None:
    """Freezing, unfreezing and LR scheduling options."""
    group = parser.add_argument_group("LR schedule and fine-tuning")
    group.add_argument(
        "--scheduler",
        choices=["none", "onecycle", "cosine", "linear", "step", "plateau"],
        default="onecycle",
        help="onecycle/cosine/linear: per optimizer step; step: LR/10 every third of the epochs; "
        "plateau: LR/10 when val/loss stalls for an epoch",
    )
    group.add_argument("--warmup", type=int, default=0, metavar="STEPS", help="linear warmup over the first STEPS")
    group.add_argument(
        "--freeze-backbone", action="store_true", help="train only the classifier head (until --unfreeze-at)"
    )
    group.add_argument(
        "--unfreeze-at",
        type=int,
        nargs="+",
        metavar="EPOCH",
        help="unfreeze the backbone at this epoch; several epochs unfreeze it block by block from the head "
        "down (implies --freeze-backbone)",
    )
    group.add_argument(
        "--backbone-lr-factor",
        type=float,
        metavar="F",
        help="on unfreezing, the backbone's LR is the head's times F (default: the same LR)",
    )


def finetune_callbacks(args: argparse.Namespace, steps_per_epoch: int) -> list[Callback]:
    """An LRScheduler and, when asked, a FreezeUnfreeze on the backbone (all but the head).

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

    factories = {
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
        callbacks.append(LRScheduler(factory, interval=interval, warmup=args.warmup, warmup_interval="step"))
    if args.freeze_backbone or args.unfreeze_at:
        when = args.unfreeze_at[0] if args.unfreeze_at and len(args.unfreeze_at) == 1 else args.unfreeze_at
        callbacks.append(FreezeUnfreeze(unfreeze_at=when, lr_factor=args.backbone_lr_factor))
    return callbacks


def add_checkpoint_args(parser: argparse.ArgumentParser) -> None:
    """Checkpointing, resume and early-stopping options."""
    group = parser.add_argument_group("checkpoints and resume")
    group.add_argument("--checkpoint-dir", metavar="DIR", help="checkpoint folder (default: <log dir>/checkpoints)")
    group.add_argument(
        "--resume",
        metavar="PATH|last",
        help="continue a run exactly: 'last' (the newest checkpoint in --checkpoint-dir, or in the checkpoints "
        "of --log-dir; starts fresh when there is none yet) or the path of a checkpoint folder",
    )
    group.add_argument(
        "--init-from",
        metavar="CHECKPOINT",
        help="start a new run from the weights of a checkpoint (a checkpoint folder, a checkpoint directory "
        "holding last.json, or a .safetensors file), with a fresh optimizer and schedule; for other settings "
        "than --resume allows",
    )
    group.add_argument(
        "--early-stop-patience",
        type=int,
        metavar="N",
        help="stop after N epochs without a better val/accuracy (default: never)",
    )


def checkpoint_callbacks(args: argparse.Namespace, run_dir: str) -> list[Callback]:
    """Keep the best model by val/accuracy and the last; stop cleanly on SIGTERM/SIGINT/SIGUSR1."""
    if args.resume == "last" and not (args.log_dir or args.checkpoint_dir):
        raise CLIError(
            "--resume last continues the run of --log-dir (or of --checkpoint-dir), and neither was given; "
            "pass the folder of the run to continue, e.g. --log-dir runs/20250101-120000 --resume last"
        )
    if args.early_stop_patience is not None and args.early_stop_patience < 1:
        raise CLIError(f"--early-stop-patience must be at least 1, got {args.early_stop_patience}")
    directory = args.checkpoint_dir or os.path.join(run_dir, "checkpoints")
    callbacks: list[Callback] = [
        ModelCheckpoint(directory, monitor="val/accuracy", mode="max"),
        TerminateOnNaN(),
        PreemptionHandler(("SIGTERM", "SIGINT", "SIGUSR1")),
    ]
    if args.early_stop_patience is not None:
        callbacks.append(EarlyStopping("val/accuracy", patience=args.early_stop_patience, mode="max"))
    return callbacks
