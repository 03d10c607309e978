"""`train`'s optional features: each feature's flags, as one argument group.

TensorBoard inspection, error analysis, layer health and training batches, weight averaging,
checkpoints and resume, MixUp and CutMix. The callbacks they turn into are built in
`job_callbacks`, which also refuses the values that cannot work.
"""

from __future__ import annotations

import argparse

from callbacks_kit.choices import BUFFER_MODES

# --monitor-mode: auto follows the metric's name (a loss is better lower).
MONITOR_MODES = ("auto", "min", "max")


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
    group.add_argument(
        "--hist-include",
        metavar="REGEX",
        help="only parameters whose name matches, e.g. 'conv|fc' (default: every parameter)",
    )
    group.add_argument(
        "--images-every", type=int, default=1, metavar="N", help="epochs between kernels, feature maps, Grad-CAM"
    )
    group.add_argument(
        "--kernel-layers",
        nargs="+",
        metavar="NAME",
        help="conv layers shown as kernel grids (default: the first conv layer)",
    )
    group.add_argument(
        "--feature-layers",
        nargs="+",
        metavar="NAME",
        help="layers whose feature maps are shown (default: 4 stages spread over the model)",
    )
    group.add_argument("--gradcam-layer", metavar="NAME", help="Grad-CAM target layer (default: the last conv block)")
    group.add_argument("--probe-images", type=int, default=8, metavar="N", help="validation images for Grad-CAM")


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
        "--layer-stats-layers",
        metavar="REGEX",
        help="layers whose statistics are logged (default: every conv and linear layer)",
    )
    group.add_argument(
        "--batch-grid-every",
        type=int,
        default=0,
        metavar="N",
        help="epochs between grids of the first training batch; 0: the first epoch only",
    )
    group.add_argument("--batch-grid-images", type=int, default=16, metavar="N", help="images in the grid; 0: off")


def add_ema_args(parser: argparse.ArgumentParser) -> None:
    """Weight averaging: an EMA of the weights, validated as val_ema/*."""
    group = parser.add_argument_group("weight averaging (EMA)")
    group.add_argument(
        "--ema",
        type=float,
        metavar="DECAY",
        help="keep an exponential moving average of the weights with this decay (e.g. 0.999) and validate it "
        "too, as val_ema/* next to val/*; its decay warms up as min(DECAY, (1+n)/(10+n)) over the updates n; "
        "the best checkpoint then ranks the averaged weights (see --monitor; default: off)",
    )
    group.add_argument("--ema-every", type=int, default=1, metavar="N", help="optimizer steps between EMA updates")
    group.add_argument(
        "--ema-buffers",
        choices=BUFFER_MODES,
        default="average",
        help="BatchNorm statistics of the EMA: averaged like the weights, or recomputed on 50 training batches "
        "before each EMA validation",
    )


def add_checkpoint_args(parser: argparse.ArgumentParser) -> None:
    """Checkpointing, resume and early-stopping options."""
    group = parser.add_argument_group("checkpoints and resume")
    group.add_argument("--checkpoint-dir", metavar="DIR", help="checkpoint folder (default: <log dir>/checkpoints)")
    group.add_argument(
        "--resume",
        metavar="PATH|last|auto",
        help="continue a run exactly: 'auto' or 'last' (the same: the newest checkpoint in --checkpoint-dir, or in "
        "the checkpoints of --log-dir; starts fresh when there is none yet, so a restarted or requeued job can "
        "run the same command) or the path of a checkpoint folder. Another number of processes or --batch-size "
        "goes on at the same sample, docs/scaling.md (default: a new run)",
    )
    group.add_argument(
        "--save-every-steps",
        type=int,
        metavar="N",
        help="also save a checkpoint every N optimizer steps (refreshes the last one; default: at epoch ends only)",
    )
    group.add_argument(
        "--save-every-minutes",
        type=float,
        metavar="M",
        help="also save a checkpoint when M minutes passed since the last one (checked at --log-every steps "
        "with several processes; default: at epoch ends only)",
    )
    group.add_argument(
        "--init-from",
        metavar="CHECKPOINT",
        help="start a new run from the weights of a checkpoint (a checkpoint folder, a checkpoint directory "
        "holding last.json, or a .safetensors file), with a fresh optimizer and schedule; for other settings "
        "than --resume allows (default: none)",
    )
    group.add_argument(
        "--early-stop-patience",
        type=int,
        metavar="N",
        help="stop after N epochs without a better --monitor metric (default: never)",
    )
    group.add_argument(
        "--monitor",
        metavar="METRIC",
        help="the metric that picks the best checkpoint (best.safetensors, which predict, evaluate and export use) "
        "and that early stopping watches: val/accuracy, val/loss, or with --ema val_ema/accuracy, val_ema/loss "
        "(the averaged weights are then the best model); with --task segmentation val/mean_iou, val/pixel_accuracy, "
        "val/loss (default: val_ema/accuracy with --ema, else val/accuracy; val/mean_iou for segmentation)",
    )
    group.add_argument(
        "--monitor-mode",
        choices=MONITOR_MODES,
        default="auto",
        help="whether lower (min) or higher (max) --monitor is better; auto: min for a metric whose name contains "
        "'loss', else max",
    )


def add_recipe_args(parser: argparse.ArgumentParser) -> None:
    """MixUp/CutMix of the training batches (train only)."""
    group = parser.add_argument_group("MixUp and CutMix")
    group.add_argument(
        "--mixup",
        type=float,
        metavar="ALPHA",
        help="MixUp, its weight drawn from a Beta distribution with both shapes ALPHA, e.g. 0.2 (default: off)",
    )
    group.add_argument(
        "--cutmix",
        type=float,
        metavar="ALPHA",
        help="CutMix, its box area drawn likewise with ALPHA, e.g. 1.0; with --mixup each batch gets one "
        "(default: off)",
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


def add_profiling_args(parser: argparse.ArgumentParser) -> None:
    """Profiling a few training steps with torch.profiler."""
    group = parser.add_argument_group("profiling")
    group.add_argument(
        "--profile-steps",
        type=int,
        default=0,
        metavar="N",
        help="profile N optimizer steps with torch.profiler, after 1 step skipped and 1 of warm-up: a trace for "
        "https://ui.perfetto.dev in <log dir>/profile and the top operators in TensorBoard's Text tab; 0: off",
    )
