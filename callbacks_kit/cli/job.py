"""The job `train` and `lr-find` build alike from their flags: data, model and optimizer, and the Trainer."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import PartialState
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from callbacks_kit.callbacks.base import Callback
from callbacks_kit.checkpoint.format import MODEL
from callbacks_kit.checkpoint.store import read_pointer
from callbacks_kit.cli.flags import check_csv_args, check_head_args, check_numbers, label_smoothing
from callbacks_kit.cli.input_size import InputSize, input_size
from callbacks_kit.cli.segmentation_job import (
    check_task_args,
    segmentation_data,
    segmentation_loss_and_metrics,
    segmentation_model,
    segmentation_size,
)
from callbacks_kit.data import (
    ShapesDataset,
    augmentation,
    csv_datasets,
    default_workers,
    image_folder_datasets,
    make_loader,
    pin_by_default,
)
from callbacks_kit.distributed import process_state, use_cpu
from callbacks_kit.errors import CLIError
from callbacks_kit.finetune import backbone_blocks, build_classifier, head_name, load_weights, param_groups
from callbacks_kit.metrics import accuracy
from callbacks_kit.trainer import Trainer

# The groups' LR while `--lr auto` waits for the LR range test (only their ratios are used).
AUTO_PLACEHOLDER_LR = 1e-3


def checkpoint_weights(path: str) -> Path:
    """The weights file of `--init-from`: a checkpoint folder's, the newest of a checkpoint directory, or a file."""
    where = Path(path)
    if where.is_dir() and not (where / MODEL).is_file():
        newest = read_pointer(where)
        if newest is None:
            raise CLIError(
                f"--init-from {where}: neither a checkpoint folder (no {MODEL}) nor a directory with last.json"
            )
        where = where / newest
    if where.is_dir():
        where = where / MODEL
    if not where.is_file():
        raise CLIError(f"--init-from {path}: no such checkpoint or weights file")
    return where


@dataclass
class Job:
    """What `train` and `lr-find` build alike from the options: data, model and optimizer."""

    state: PartialState
    cpu_only: bool
    train_loader: DataLoader
    val_loader: DataLoader
    classes: list[str]
    size: int
    resize: int  # the side images are resized to before the centre crop (run.json)
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    input: InputSize  # size and resize, and why (`input.describe()`: the line printed at start)
    task: str = "classification"

    def describe(self, args: argparse.Namespace) -> str:
        """The model and the data, for the line a command prints at start."""
        if args.data or args.labels:
            source = f"{args.data or args.labels} ({len(self.train_loader.dataset)} train / "  # type: ignore[arg-type]
            source += f"{len(self.val_loader.dataset)} val, {self.size}px)"  # type: ignore[arg-type]
        else:
            source = f"built-in shapes ({args.train_samples} train / {args.val_samples} val, {self.size}px)"
        task = " (segmentation)" if self.task == "segmentation" else ""
        return f"{args.model}{task} on {source}: {len(self.classes)} classes"

    def processes(self, trainer: Trainer) -> str:
        """Where it runs, for the same line: processes, device and precision."""
        precision = trainer.accelerator.mixed_precision
        return f"{self.state.num_processes} process(es) on {trainer.device}, mixed precision {precision}"

    def trainer(self, args: argparse.Namespace, callbacks: list[Callback], progress_bar: bool = True) -> Trainer:
        """The Trainer of this job with `callbacks`."""
        if self.task == "segmentation":
            loss_fn, metrics = segmentation_loss_and_metrics(args, self.classes)
        else:
            loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)  # takes mixed (soft) targets too
            metrics = {"accuracy": accuracy}
        return Trainer(
            self.model,
            self.optimizer,
            loss_fn,
            metrics=metrics,
            callbacks=callbacks,
            mixed_precision=args.mixed_precision,
            gradient_accumulation_steps=args.grad_accum,
            max_grad_norm=args.max_grad_norm,
            cpu=self.cpu_only,
            seed=args.seed,
            log_every_n_steps=args.log_every,
            progress_bar=progress_bar,
        )


def build_job(args: argparse.Namespace) -> Job:
    """Check the numbers, then build the data, the model (with --weights / --init-from) and AdamW.

    With `--lr auto` the param groups start at `AUTO_PLACEHOLDER_LR`; the LR range test only
    uses their ratios (all 1 here) and the caller sets the suggestion afterwards.
    """
    check_csv_args(args)
    check_head_args(args)
    check_task_args(args)
    check_numbers(args)
    # The folder's images are looked at before any dataset is built; segmentation resizes whole images, uncropped.
    shape = segmentation_size(args) if args.task == "segmentation" else input_size(args)
    # Like Accelerate, honour ACCELERATE_USE_CPU; without a GPU, a multi-process launch is gloo on CPUs.
    cpu_only = use_cpu(args.cpu)
    state = process_state(cpu_only)
    torch.manual_seed(args.seed)
    label_smoothing(args)
    train_set: Dataset
    val_set: Dataset
    size = shape.size
    if args.task == "segmentation":
        train_set, val_set, classes, workers = segmentation_data(args, size)
    elif args.data or args.labels:
        ratio = shape.crop_ratio
        assert ratio is not None  # --data and --labels always have one
        augment, flip = args.augment or "basic", not args.no_flip
        if args.labels:
            train_set, val_set, classes = csv_datasets(
                args.labels,
                args.images,
                size,
                args.val_split,
                args.seed,
                args.path_column,
                args.label_column,
                augment=augment,
                flip=flip,
                crop_ratio=ratio,
            )
        else:
            train_set, val_set, classes = image_folder_datasets(
                args.data,
                size,
                args.val_split,
                args.seed,
                augment=augment,
                flip=flip,
                crop_ratio=ratio,
            )
        workers = default_workers() if args.workers is None else args.workers
    else:
        steps = augmentation(size, args.augment or "none", flip=not args.no_flip)
        train_set = ShapesDataset(
            args.train_samples, size, seed=args.seed, transform=v2.Compose(steps) if steps else None
        )
        val_set = ShapesDataset(args.val_samples, size, seed=args.seed + 10_000)
        classes = list(ShapesDataset.classes)
        workers = 0 if args.workers is None else args.workers  # generating is cheaper than a worker's IPC
    pin = pin_by_default() and not cpu_only  # pinned pages only help copies to a GPU
    # Drop the ragged last batch, as the reference training scripts do: one sample fails BatchNorm.
    # All three kinds have a length; torch's Dataset declares no __len__.
    drop_last = len(train_set) > args.batch_size * state.num_processes  # type: ignore[arg-type]
    train_loader = make_loader(
        train_set, args.batch_size, shuffle=True, workers=workers, pin_memory=pin, drop_last=drop_last
    )
    val_loader = make_loader(val_set, args.batch_size, shuffle=False, workers=workers, pin_memory=pin)
    if args.task == "segmentation":
        model = segmentation_model(args, classes, state.print)
    else:
        model = build_classifier(
            args.model,
            len(classes),
            args.weights,
            allow_partial=args.allow_partial_weights,
            report=state.print,
            head=args.head,
            hidden=args.hidden,
            dropout=args.dropout,
        )
    if getattr(args, "init_from", None):  # train's option; lr-find has none
        if args.resume:
            raise CLIError("--init-from starts a new run and --resume continues one: pass only one of them")
        source = checkpoint_weights(args.init_from)
        state.print(f"initialised from {source}: {load_weights(model, source, strict=True)}")
    # One param group per block, named for TensorBoard, so each can get its own LR when unfrozen.
    lr = AUTO_PLACEHOLDER_LR if args.lr == "auto" else args.lr
    blocks = [head_name(model), *backbone_blocks(model)]
    groups = param_groups(model, dict.fromkeys(blocks, lr))
    optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=args.weight_decay)
    return Job(
        state, cpu_only, train_loader, val_loader, classes, size, shape.resize, model, optimizer, shape, args.task
    )
