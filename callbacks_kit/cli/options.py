"""The main job's optional features: each adds its command-line options and builds its callbacks."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch.optim import lr_scheduler as schedulers
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter

from callbacks_kit.callbacks.base import Callback
from callbacks_kit.callbacks.batch_grid import BatchGrid
from callbacks_kit.callbacks.class_report import ClassReport
from callbacks_kit.callbacks.confusion_matrix import ConfusionMatrix
from callbacks_kit.callbacks.early_stopping import EarlyStopping
from callbacks_kit.callbacks.ema import BUFFER_MODES, EMA
from callbacks_kit.callbacks.embeddings import Embeddings
from callbacks_kit.callbacks.feature_maps import FeatureMaps
from callbacks_kit.callbacks.freeze_unfreeze import FreezeUnfreeze
from callbacks_kit.callbacks.grad_cam import GradCAM
from callbacks_kit.callbacks.kernel_grid import KernelGrid
from callbacks_kit.callbacks.layer_stats import LayerStats
from callbacks_kit.callbacks.lr_scheduler import LearningRateScheduler
from callbacks_kit.callbacks.mix import MixUpCutMix
from callbacks_kit.callbacks.model_checkpoint import ModelCheckpoint
from callbacks_kit.callbacks.preemption_handler import PreemptionHandler
from callbacks_kit.callbacks.terminate_on_nan import TerminateOnNaN
from callbacks_kit.callbacks.top_losses import TopLosses
from callbacks_kit.callbacks.weight_histograms import WeightHistograms
from callbacks_kit.data.transforms import AUGMENTS
from callbacks_kit.errors import AugmentationError, CLIError
from callbacks_kit.finetune import backbone_blocks, freeze, unfreeze
from callbacks_kit.lr_finder import LRFinder, LRFinderResult

if TYPE_CHECKING:
    from callbacks_kit.trainer import Trainer
from callbacks_kit.finetune.heads import HEADS


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


def add_error_analysis_args(parser: argparse.ArgumentParser) -> None:
    """What the model gets wrong: the top-loss gallery, the per-class report and PR curves, the projector."""
    group = parser.add_argument_group("error analysis (at each validation; off with --no-inspection)")
    group.add_argument(
        "--top-losses",
        type=int,
        default=16,
        metavar="K",
        help="validation samples with the highest loss shown as a gallery with Grad-CAM; 0: none",
    )
    group.add_argument("--no-class-report", action="store_true", help="no per-class report, scalars or PR curves")
    group.add_argument(
        "--embeddings",
        type=int,
        default=0,
        metavar="N",
        help="project the head's input features of N validation samples at the end (TensorBoard's projector)",
    )


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
    """An LearningRateScheduler and, when asked, a FreezeUnfreeze on the backbone (all but the head).

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
        callbacks.append(LearningRateScheduler(factory, interval=interval, warmup=args.warmup, warmup_interval="step"))
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


def add_augment_args(parser: argparse.ArgumentParser) -> None:
    """What the training images and the loss see: --augment, --no-flip, --label-smoothing (train and lr-find)."""
    group = parser.add_argument_group("augmentation and regularisation")
    group.add_argument(
        "--augment",
        choices=AUGMENTS,
        help="training augmentation: none; basic (random resized crop and horizontal flip); or basic followed by "
        "torchvision's TrivialAugmentWide, RandAugment or AutoAugment. Default: basic for --data, none for the "
        "built-in shapes (validation images are never augmented)",
    )
    group.add_argument(
        "--no-flip",
        action="store_true",
        help="no horizontal flip in --augment (digits, text: a mirror changes the class)",
    )
    group.add_argument(
        "--label-smoothing",
        type=float,
        default=0.0,
        metavar="EPS",
        help="label smoothing of the cross-entropy (training and validation loss), e.g. 0.1; composes with mixing",
    )


def add_recipe_args(parser: argparse.ArgumentParser) -> None:
    """MixUp/CutMix of the training batches (train only)."""
    group = parser.add_argument_group("MixUp and CutMix")
    group.add_argument(
        "--mixup",
        type=float,
        metavar="ALPHA",
        help="MixUp, its weight drawn from a Beta distribution with both shapes ALPHA, e.g. 0.2",
    )
    group.add_argument(
        "--cutmix",
        type=float,
        metavar="ALPHA",
        help="CutMix, its box area drawn likewise with ALPHA, e.g. 1.0; with --mixup each batch gets one",
    )
    group.add_argument(
        "--mix-prob", type=float, default=1.0, metavar="P", help="share of batches mixed by --mixup/--cutmix"
    )
    group.add_argument(
        "--mix-stop-epoch",
        type=int,
        metavar="EPOCH",
        help="train without MixUp/CutMix from this epoch (counted from 0) on; default: mix to the end",
    )


def label_smoothing(args: argparse.Namespace) -> float:
    """`--label-smoothing`, checked: PyTorch takes values in [0, 1]; 1 would leave no label at all."""
    eps = args.label_smoothing
    if not (math.isfinite(eps) and 0 <= eps < 1):
        raise CLIError(f"--label-smoothing must be at least 0 and below 1 (0.1 is common), got {eps}")
    return eps


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
    return message.replace("pass None to turn that transform off", "leave the flag out to turn that transform off")


def add_ema_args(parser: argparse.ArgumentParser) -> None:
    """Weight averaging: an EMA of the weights, validated as val_ema/*."""
    group = parser.add_argument_group("weight averaging (EMA)")
    group.add_argument(
        "--ema",
        type=float,
        metavar="DECAY",
        help="keep an exponential moving average of the weights with this decay (e.g. 0.999) and validate it "
        "too, as val_ema/* next to val/*; its decay warms up as min(DECAY, (1+n)/(10+n)) over the updates n",
    )
    group.add_argument("--ema-every", type=int, default=1, metavar="N", help="optimizer steps between EMA updates")
    group.add_argument(
        "--ema-buffers",
        choices=BUFFER_MODES,
        default="average",
        help="BatchNorm statistics of the EMA: averaged like the weights, or recomputed on 50 training batches "
        "before each EMA validation",
    )


def ema_callbacks(args: argparse.Namespace) -> list[Callback]:
    """An `EMA` when `--ema` is given."""
    if args.ema is None:
        return []
    if not 0 < args.ema < 1:  # also refuses NaN
        raise CLIError(f"--ema DECAY must be strictly between 0 and 1, e.g. 0.999 or 0.9999; got {args.ema}")
    if args.ema_every < 1:
        raise CLIError(f"--ema-every must be at least 1 optimizer step, got {args.ema_every}")
    return [EMA(args.ema, every_n_steps=args.ema_every, buffers=args.ema_buffers)]


def add_lr_find_args(parser: argparse.ArgumentParser) -> None:
    """The LR range test's sweep (`lr-find`, and `train --lr auto`)."""
    group = parser.add_argument_group("LR range test (lr-find; train --lr auto)")
    group.add_argument("--lr-find-min", type=float, default=1e-7, metavar="LR", help="first LR of the sweep")
    group.add_argument("--lr-find-max", type=float, default=10.0, metavar="LR", help="last LR of the sweep")
    group.add_argument(
        "--lr-find-steps",
        type=int,
        default=100,
        metavar="N",
        help="optimizer steps of the exponential sweep (it stops earlier when the loss diverges)",
    )


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
    process). The backbone is frozen for the sweep only: `FreezeUnfreeze` freezes it
    again when training starts.
    """
    model = trainer.unwrapped_model
    frozen = (
        [model.get_submodule(name) for name in backbone_blocks(model)]
        if args.freeze_backbone or args.unfreeze_at
        else []
    )
    if frozen:
        freeze(frozen)
        trainer.refresh_trainable()
    try:
        result = lr_finder(args).run(trainer, loader)
    finally:
        if frozen:
            unfreeze(frozen)
            trainer.refresh_trainable()
    if trainer.is_main_process:
        writer = SummaryWriter(log_dir)
        result.log(writer)
        writer.close()
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
    for group in trainer.optimizer.param_groups:
        group["lr"] = result.suggestion * group["lr"] / result.base_lr
    trainer.print(f"--lr auto: training with LR {result.suggestion:.3g} (curve in {log_dir})")
    return result.suggestion


def add_head_args(parser: argparse.ArgumentParser) -> None:
    """The classifier head: one Linear layer, or an MLP."""
    group = parser.add_argument_group("classifier head")
    group.add_argument(
        "--head",
        choices=HEADS,
        default="linear",
        help="linear: one Linear layer; mlp: dropout, a hidden Linear with BatchNorm and ReLU, dropout, Linear",
    )
    group.add_argument("--hidden", type=int, default=512, metavar="N", help="hidden units of --head mlp")
    group.add_argument("--dropout", type=float, default=0.2, metavar="P", help="dropout of --head mlp")


def check_head_args(args: argparse.Namespace) -> None:
    """Refuse MLP-head settings that cannot work, or that would be ignored."""
    if args.head == "mlp" and (args.hidden < 1 or not 0 <= args.dropout < 1):
        raise CLIError(f"--hidden must be at least 1 and --dropout in [0, 1), got {args.hidden} and {args.dropout}")
    if args.head != "mlp" and (args.hidden != 512 or args.dropout != 0.2):
        raise CLIError("--hidden and --dropout shape the MLP head: add --head mlp, or drop them")


def add_csv_args(parser: argparse.ArgumentParser) -> None:
    """Images labelled by a CSV instead of an ImageFolder tree."""
    group = parser.add_argument_group("CSV-labelled data")
    group.add_argument("--labels", metavar="FILE.csv", help="CSV of image paths and labels (with --images)")
    group.add_argument("--images", metavar="DIR", help="folder the CSV's paths are relative to")
    group.add_argument("--path-column", metavar="NAME", help="column of image paths (default: the first)")
    group.add_argument("--label-column", metavar="NAME", help="column of labels (default: 'label', else the second)")


def check_csv_args(args: argparse.Namespace) -> None:
    """`--labels` and `--images` go together, never with `--data`; the column names need `--labels`."""
    if bool(args.labels) != bool(args.images):
        raise CLIError("--labels FILE.csv and --images DIR go together: pass both, or neither")
    if args.labels and args.data:
        raise CLIError("--data (an ImageFolder) and --labels (a CSV) both name the data: pass only one")
    if (args.path_column or args.label_column) and not args.labels:
        raise CLIError("--path-column and --label-column name columns of --labels FILE.csv; add --labels and --images")
