"""`callbacks-kit train`: the main job, and the other commands of the console script."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list

from callbacks_kit.callbacks.base import Callback
from callbacks_kit.callbacks.checkpoint import ModelCheckpoint
from callbacks_kit.callbacks.early_stopping import EarlyStopping, TerminateOnNaN
from callbacks_kit.callbacks.preemption import PreemptionHandler
from callbacks_kit.callbacks.progress import ProgressBar
from callbacks_kit.callbacks.scheduling import ScheduleError
from callbacks_kit.callbacks.tensorboard import TensorBoardLogger, default_log_dir
from callbacks_kit.data import DataError, ShapesDataset, default_workers, image_folder_datasets, make_loader
from callbacks_kit.finetune import FinetuneError, backbone_blocks, build_classifier, head_name, param_groups
from callbacks_kit.inspect_run import build_parser as build_inspect_parser
from callbacks_kit.inspect_run import run_inspect
from callbacks_kit.layers import LayerNotFoundError
from callbacks_kit.metrics import accuracy
from callbacks_kit.trainer import Trainer, TrainerError


class CLIError(ValueError):
    """A command-line option that cannot work."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `callbacks-kit`."""
    parser = argparse.ArgumentParser(prog="callbacks-kit", description="TensorBoard-integrated callback toolkit.")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser(
        "train",
        help="train an image classifier and write a TensorBoard run",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = train.add_argument_group("data")
    data.add_argument(
        "--data",
        metavar="DIR",
        help="ImageFolder tree (train/ and val/, or class folders); default: the built-in shapes dataset",
    )
    data.add_argument("--val-split", type=float, default=None, help="fraction held out when --data has no val/ (0.2)")
    data.add_argument("--image-size", type=int, default=None, help="input size (64 for shapes, 224 for --data)")
    data.add_argument("--train-samples", type=int, default=3000, help="size of the built-in training set")
    data.add_argument("--val-samples", type=int, default=600, help="size of the built-in validation set")
    data.add_argument(
        "--workers", type=int, default=None, help="DataLoader workers (0 for shapes, else half the cores)"
    )
    model = train.add_argument_group("model and optimisation")
    model.add_argument("--model", default="resnet18", help="any torchvision classifier name")
    model.add_argument("--weights", metavar="PATH", help="local state_dict to start from (head is replaced)")
    model.add_argument("--epochs", type=int, default=5)
    model.add_argument("--batch-size", type=int, default=64, help="per process")
    model.add_argument("--lr", type=float, default=2e-3)
    model.add_argument("--weight-decay", type=float, default=0.05)
    model.add_argument("--grad-accum", type=int, default=1, help="batches per optimizer step")
    model.add_argument("--max-grad-norm", type=float, default=None)
    run = train.add_argument_group("run")
    run.add_argument("--log-dir", help="folder of this run (default runs/<date>-<time>)")
    run.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="no")
    run.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is present")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--log-every", type=int, default=10, help="optimizer steps between loss reads")
    run.add_argument("--no-progress", action="store_true", help="no progress bar (summary lines stay)")
    _add_inspection_args(train)
    _add_finetune_args(train)
    _add_checkpoint_args(train)
    inspect = commands.add_parser("inspect", help="print what a TensorBoard run contains, per plugin")
    build_inspect_parser(inspect)
    return parser


# Each feature adds its options and its callbacks in its own pair of functions.
def _add_inspection_args(parser: argparse.ArgumentParser) -> None:
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


def _inspection_callbacks(args: argparse.Namespace, classes: Sequence[str]) -> list[Callback]:
    """Histograms, kernels, feature maps, Grad-CAM and the confusion matrix at the main job's cadences."""
    from callbacks_kit.callbacks.confusion import ConfusionMatrix
    from callbacks_kit.callbacks.gradcam import GradCAM
    from callbacks_kit.callbacks.histograms import WeightHistograms
    from callbacks_kit.callbacks.images import FeatureMaps, KernelGrid

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


def _add_finetune_args(parser: argparse.ArgumentParser) -> None:
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


def _finetune_callbacks(args: argparse.Namespace, steps_per_epoch: int) -> list[Callback]:
    """An LRScheduler and, when asked, a FreezeUnfreeze on the backbone (all but the head).

    The schedules get the exact optimizer steps per epoch from the trainer at fit start.
    """
    from torch.optim import lr_scheduler as schedulers

    from callbacks_kit.callbacks.finetuning import FreezeUnfreeze
    from callbacks_kit.callbacks.scheduling import LRScheduler

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


def _add_checkpoint_args(parser: argparse.ArgumentParser) -> None:
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
        "--early-stop-patience",
        type=int,
        metavar="N",
        help="stop after N epochs without a better val/accuracy (default: never)",
    )


def _checkpoint_callbacks(args: argparse.Namespace, run_dir: str) -> list[Callback]:
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


def _resume_from(args: argparse.Namespace) -> str | None:
    """What `--resume` names, for `Trainer.fit(resume_from=...)`."""
    return args.resume


def _run_dir(requested: str | None) -> str:
    """One run folder for all processes: the main process picks it, the others receive it."""
    state = PartialState()
    chosen = [requested or (default_log_dir() if state.is_main_process else None)]
    if state.num_processes > 1:
        broadcast_object_list(chosen, from_process=0)
    return chosen[0]


def train(args: argparse.Namespace) -> dict[str, float]:
    """Build data, model and callbacks from `args`, train, and say where the run went."""
    for name in ("epochs", "batch_size", "train_samples", "val_samples", "log_every", "grad_accum"):
        if getattr(args, name) < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.lr <= 0:
        raise CLIError(f"--lr must be positive, got {args.lr}")
    # Like Accelerate, honour ACCELERATE_USE_CPU; without a GPU, a multi-process launch is gloo on CPUs.
    cpu_only = args.cpu or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    cpu_only = cpu_only or (int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available())
    state = PartialState(cpu=cpu_only)
    torch.manual_seed(args.seed)
    if args.data:
        size = args.image_size or 224
        train_set, val_set, classes = image_folder_datasets(args.data, size, args.val_split, args.seed)
        workers = default_workers() if args.workers is None else args.workers
    else:
        size = args.image_size or 64
        train_set = ShapesDataset(args.train_samples, size, seed=args.seed)
        val_set = ShapesDataset(args.val_samples, size, seed=args.seed + 10_000)
        classes = list(ShapesDataset.classes)
        workers = 0 if args.workers is None else args.workers  # generating is cheaper than a worker's IPC
    pin = torch.cuda.is_available() and not args.cpu
    train_loader = make_loader(train_set, args.batch_size, shuffle=True, workers=workers, pin_memory=pin)
    val_loader = make_loader(val_set, args.batch_size, shuffle=False, workers=workers, pin_memory=pin)
    model = build_classifier(args.model, len(classes), args.weights)
    # One param group per block, named for TensorBoard, so each can get its own LR when unfrozen.
    blocks = [head_name(model), *backbone_blocks(model)]
    groups = param_groups(model, dict.fromkeys(blocks, args.lr))
    optimizer = torch.optim.AdamW(groups, lr=args.lr, weight_decay=args.weight_decay)
    run_dir = _run_dir(args.log_dir)
    steps_per_epoch = max(1, len(train_loader) // max(1, state.num_processes) // args.grad_accum)
    hparams = {k: v for k, v in vars(args).items() if v is not None and k != "command"}
    callbacks: list[Callback] = [TensorBoardLogger(run_dir, hparams=hparams), ProgressBar(bar=not args.no_progress)]
    callbacks += _inspection_callbacks(args, classes)
    callbacks += _finetune_callbacks(args, steps_per_epoch)
    callbacks += _checkpoint_callbacks(args, run_dir)
    trainer = Trainer(
        model,
        optimizer,
        torch.nn.CrossEntropyLoss(),
        metrics={"accuracy": accuracy},
        callbacks=callbacks,
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.grad_accum,
        max_grad_norm=args.max_grad_norm,
        cpu=cpu_only,
        seed=args.seed,
        log_every_n_steps=args.log_every,
    )
    source = args.data or f"built-in shapes ({args.train_samples} train / {args.val_samples} val, {size}px)"
    trainer.print(
        f"training {args.model} on {source}: {len(classes)} classes, {args.epochs} epochs, "
        f"{state.num_processes} process(es) on {trainer.device}, mixed precision {args.mixed_precision}"
    )
    start = time.perf_counter()
    trainer.fit(train_loader, val_loader, epochs=args.epochs, resume_from=_resume_from(args))
    metrics = dict(trainer.state.metrics)
    trainer.print(
        f"done in {time.perf_counter() - start:.0f} s: val/accuracy {metrics.get('val/accuracy', float('nan')):.4f}, "
        f"val/loss {metrics.get('val/loss', float('nan')):.4f}\n"
        f"run written to {run_dir}\nopen it with: tensorboard --logdir {run_dir}"
    )
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `callbacks-kit` console script."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            train(args)
        elif args.command == "inspect":
            return run_inspect(args)
    except (CLIError, DataError, FinetuneError, LayerNotFoundError, ScheduleError, TrainerError) as exc:
        print(f"callbacks-kit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0
