"""The performance benchmark of callbacks_kit: prints tables, writes JSON, enforces the budgets.

    python scripts/benchmark.py [--quick] [--json results.json] [--repeats N] [--threads N]

Sections (docs/performance.md shows a full run and explains the method):
  1. loop        time per optimizer step of the Trainer with its default callbacks, and of
                 PyTorch Lightning and pytorch-accelerated when installed, against a
                 hand-written Accelerate loop run in lockstep with each (same model, data
                 pre-generated on the device, optimizer); median of the runs; a tiny MLP
                 and a small CNN. CPU time on a CPU, wall time on a GPU.
  2. callbacks   every callback of the main job (`callbacks-kit train` with its default
                 options, one epoch of ResNet-18): time per call and share of the epoch.
  3. input       whether the main job waits for its data (built-in shapes; ImageFolder JPEGs).
  4. histograms  the device histograms against SummaryWriter.add_histogram (ResNet-18, -50).
  5. syncs       host-device syncs on non-logging steps.
  6. throughput  on a GPU (or with --throughput): ResNet-50 images/s, bf16 and fp16, of the
                 Trainer with the main job's inspection callbacks against the hand loop.
Budgets: Trainer <= 1.05x the hand loop on the MLP and <= 1.02x on the CNN; each inspection
callback <= 5% of an epoch; device histograms >= 4x faster on a CPU; zero syncs on a
non-logging step with the default callbacks and the TensorBoardLogger. Exit status 1 when
one is missed. --quick is a smoke run: its timing budgets are shown, not enforced.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runs from a checkout without installing

from callbacks_kit import Callback, TensorBoardLogger, Trainer  # noqa: E402
from callbacks_kit.callbacks.base import CallbackList  # noqa: E402

LR = 1e-3
LOOP_BUDGETS = {"tiny MLP": 1.05, "small CNN": 1.02}
CALLBACK_SHARE_BUDGET = 0.05
HISTOGRAM_SPEEDUP_BUDGET = 4.0
HAND = "hand-written Accelerate loop"
Batch = tuple[torch.Tensor, torch.Tensor]


# ------------------------------------------------------------------------------ host syncs
# Reads of a tensor's value: on a GPU each makes the host wait for the device.
SYNC_OPS = frozenset(
    {"item", "tolist", "cpu", "numpy", "nonzero", "__float__", "__int__", "__bool__", "__index__", "__format__"}
)
TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
# Where torch hands a Python-level dunder (`Tensor.__format__`) to the mode: not the caller.
TORCH_PLUMBING = (os.path.join(TORCH_DIR, "overrides.py"), os.path.join(TORCH_DIR, "_tensor.py"))
DATALOADER_DIR = os.path.join(TORCH_DIR, "utils", "data") + os.sep


class HostSyncCounter(TorchFunctionMode):
    """Records the tensor reads that would make the host wait for a GPU, on any device.

    Counts `.item()`, `.tolist()`, `.cpu()`, `.numpy()`, `nonzero`, and `float()`, `int()`,
    `bool()`, indexing with and formatting of a tensor, called from code outside torch (the
    trainer, callbacks, Accelerate, user code). Left out: reads inside torch itself (Adam
    reads its step counter, which torch keeps on the CPU on purpose) and reads while a
    DataLoader builds a batch (a Dataset's `__getitem__` works on the host by design). On
    a GPU, `torch.cuda.set_sync_debug_mode` sees everything.

        with HostSyncCounter() as counter:
            trainer.fit(loader)
        counter.events  # ["__float__ at callbacks_kit/trainer.py:420", ...]
    """

    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        if getattr(func, "__name__", "") in SYNC_OPS:
            where = _caller_outside_torch(sys._getframe(1))
            if where is not None:
                self.events.append(f"{func.__name__} at {where}")
        return func(*args, **(kwargs or {}))


def _caller_outside_torch(frame: FrameType | None) -> str | None:
    """`file:line` of the code that asked for the value; None for torch itself and data loading."""
    while frame is not None and frame.f_code.co_filename in TORCH_PLUMBING:
        frame = frame.f_back
    if frame is None or frame.f_code.co_filename.startswith(TORCH_DIR):
        return None
    caller, outer = frame, frame.f_back
    while outer is not None:
        if outer.f_code.co_filename.startswith(DATALOADER_DIR):
            return None
        outer = outer.f_back
    path = caller.f_code.co_filename
    path = os.path.relpath(path, REPO) if path.startswith(str(REPO)) else path.split("site-packages/")[-1]
    return f"{path}:{caller.f_lineno}"


class StepBoundary(Callback):
    """Notes where each training step starts and ends in a `HostSyncCounter`'s events.

    `syncs_per_step` adds two: one that runs before every other callback (`first=True`)
    and one that runs after all of them.
    """

    def __init__(self, counter: HostSyncCounter, marks: list[tuple[str, int, bool]], first: bool) -> None:
        self.order = -(10**9) if first else 10**9
        self.counter, self.marks, self.first = counter, marks, first

    def on_train_batch_start(self, trainer: Trainer) -> None:
        if self.first:
            self.marks.append(("start", len(self.counter.events), trainer.state.batch_idx == 0))

    def on_train_batch_end(self, trainer: Trainer) -> None:
        if not self.first:
            self.marks.append(("end", len(self.counter.events), trainer.state.is_log_step))


def step_syncs(counter: HostSyncCounter, marks: list[tuple[str, int, bool]]) -> list[tuple[bool, list[str]]]:
    """`(is_log_step, sync events)` per step, from the marks of two `StepBoundary` callbacks.

    A step runs from the end of the previous one (the loop's own code between steps
    counts) to the end of its last callback; an epoch's first step starts at its first
    callback (the epoch's end and start are not steps).
    """
    steps, begin = [], None
    for kind, index, flag in marks:
        if kind == "start" and (begin is None or flag):  # flag: the epoch's first batch
            begin = index
        elif kind == "end":  # flag: a log step
            steps.append((flag, counter.events[begin:index]))
            begin = index
    return steps


def syncs_per_step(trainer: Trainer, loader: Any, epochs: int = 1) -> list[tuple[bool, list[str]]]:
    """Fit `trainer` on `loader` and return `(is_log_step, sync events)` for every step."""
    counter, marks = HostSyncCounter(), []
    trainer.callbacks.append(StepBoundary(counter, marks, first=True))
    trainer.callbacks.append(StepBoundary(counter, marks, first=False))
    with counter:
        trainer.fit(loader, epochs=epochs)
    return step_syncs(counter, marks)


# ------------------------------------------------------------------------------ 1. loop
@dataclass
class Case:
    """One model and its data, trained by every runner from the same initial weights."""

    name: str
    template: nn.Module
    batches: list[Batch]
    device: torch.device
    mixed_precision: str
    loss_fn: nn.Module = field(default_factory=nn.CrossEntropyLoss)

    def fresh(self) -> tuple[nn.Module, torch.optim.Optimizer]:
        """The same initial model every time, and a new AdamW over it."""
        model = copy.deepcopy(self.template)
        return model, torch.optim.AdamW(model.parameters(), lr=LR)


class HandLoop:
    """The loop a user writes by hand with Accelerate: the baseline, one step at a time."""

    def __init__(self, case: Case) -> None:
        self.accelerator = Accelerator(cpu=case.device.type == "cpu", mixed_precision=case.mixed_precision)
        self.model, self.optimizer = self.accelerator.prepare(*case.fresh())
        self.model.train()
        self.loss_fn = case.loss_fn

    @torch.enable_grad()
    def step(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        loss = self.loss_fn(self.model(inputs), targets)
        self.accelerator.backward(loss)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


class Lockstep:
    """Pre-made batches that run one step of the hand-written loop before handing out each.

    Whatever consumes the batches (the Trainer, Lightning...) and the hand-written loop
    take turns step by step, so a busy machine slows both alike. The framework's time for
    a step runs from handing out a batch to the next request, less the hand step run in
    between; a loader that fetches one batch ahead shifts the steps by one, not their
    count. The first `skip` steps of both warm up and are not counted. On a CPU the clock
    is the process's CPU time; on a GPU it is wall time with every step synchronised, so
    host overhead cannot hide behind queued device work.
    """

    def __init__(self, case: Case, skip: int) -> None:
        self.case, self.skip = case, skip
        self.framework_s = self.hand_s = 0.0

    def __len__(self) -> int:
        return len(self.case.batches)

    def __iter__(self) -> Iterator[Batch]:
        for i in self.indices():
            yield self.case.batches[i]

    def indices(self) -> Iterator[int]:
        """Batch indices; one timed hand step runs before each is handed out."""
        hand = HandLoop(self.case)  # built here: after the framework has set up its Accelerator
        self.framework_s = self.hand_s = 0.0
        handed_out = 0.0
        for i, (inputs, targets) in enumerate(self.case.batches):
            start = self._now()
            hand.step(inputs, targets)
            end = self._now()
            if i > self.skip:
                self.framework_s += start - handed_out
                self.hand_s += end - start
            handed_out = end
            yield i

    def per_step(self) -> tuple[float, float]:
        """Seconds per step of the framework and of the hand-written loop beside it."""
        if not self.hand_s > 0:
            raise RuntimeError("the loop did not reach the last batch")
        steps = len(self.case.batches) - 1 - self.skip
        return self.framework_s / steps, self.hand_s / steps

    def _now(self) -> float:
        if self.case.device.type == "cuda":
            torch.cuda.synchronize()
            return time.perf_counter()
        # On a CPU, the process's CPU time: the work done, without the waits for other
        # processes that make wall time on a shared machine mostly noise.
        return time.process_time()


class LockstepSampler(Sampler[int]):
    """The lockstep as a sampler, for a framework that only takes a dataset (pytorch-accelerated)."""

    def __init__(self, lockstep: Lockstep) -> None:
        self.lockstep = lockstep

    def __len__(self) -> int:
        return len(self.lockstep)

    def __iter__(self) -> Iterator[int]:
        return self.lockstep.indices()


class BatchDataset(Dataset):
    """Item i is the whole pre-made batch i."""

    def __init__(self, batches: list[Batch]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> Batch:
        return self.batches[index]


def _only_item(items: list[Batch]) -> Batch:
    return items[0]


Runner = Callable[[Case, Lockstep], None]


def tiny_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


def make_batches(shape: tuple[int, ...], n: int, device: torch.device) -> list[Batch]:
    g = torch.Generator().manual_seed(0)
    return [
        (torch.randn(shape, generator=g).to(device), torch.randint(10, (shape[0],), generator=g).to(device))
        for _ in range(n)
    ]


def run_hand_loop(case: Case, data: Lockstep) -> None:
    """A second hand-written loop: the control, whose ratio shows the method's own bias."""
    AcceleratorState._reset_state()
    GradientState._reset_state()
    hand = HandLoop(case)
    for inputs, targets in data:
        hand.step(inputs, targets)


def run_trainer(case: Case, data: Lockstep) -> None:
    """callbacks_kit's Trainer with its default callbacks (the progress bar)."""
    model, optimizer = case.fresh()
    cpu = case.device.type == "cpu"
    Trainer(model, optimizer, case.loss_fn, cpu=cpu, mixed_precision=case.mixed_precision).fit(data)


def lightning_runner() -> tuple[Runner | None, str]:
    """PyTorch Lightning as its users configure it; its logger off, as ours is by default."""
    try:
        import lightning as L  # noqa: N812 (Lightning's own convention)
    except ImportError:
        return None, "not installed (pip install -e '.[bench]')"
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)

    class LitClassifier(L.LightningModule):
        def __init__(self, model: nn.Module, loss_fn: nn.Module) -> None:
            super().__init__()
            self.model, self.loss_fn = model, loss_fn

        def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
            inputs, targets = batch
            return self.loss_fn(self.model(inputs), targets)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.AdamW(self.parameters(), lr=LR)

    def run(case: Case, data: Lockstep) -> None:
        model, _ = case.fresh()
        trainer = L.Trainer(
            accelerator="gpu" if case.device.type == "cuda" else "cpu",
            devices=1,
            max_epochs=1,
            precision={"no": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed"}[case.mixed_precision],
            logger=False,  # ours writes no logs unless a TensorBoardLogger is added
            enable_checkpointing=False,  # nor checkpoints
            enable_model_summary=False,  # nor a summary; the progress bar stays on, as ours does
        )
        trainer.fit(LitClassifier(model, case.loss_fn), train_dataloaders=data)

    return run, f"lightning {L.__version__}"


def pytorch_accelerated_runner() -> tuple[Runner | None, str]:
    """pytorch-accelerated with its default callbacks (progress bar, printed metrics, NaN check)."""
    try:
        import pytorch_accelerated
    except ImportError:
        return None, "not installed (pip install -e '.[bench]')"

    def run(case: Case, data: Lockstep) -> None:
        model, optimizer = case.fresh()
        AcceleratorState._reset_state()
        GradientState._reset_state()
        os.environ["ACCELERATE_MIXED_PRECISION"] = case.mixed_precision  # its Accelerator() reads this
        trainer = pytorch_accelerated.Trainer(model, loss_func=case.loss_fn, optimizer=optimizer)
        # It only takes a dataset: one item per pre-made batch, read in the main process.
        trainer.train(
            train_dataset=BatchDataset(case.batches),
            num_epochs=1,
            per_device_batch_size=1,
            collate_fn=_only_item,
            train_dataloader_kwargs={"sampler": LockstepSampler(data), "num_workers": 0, "pin_memory": False},
        )

    return run, f"pytorch-accelerated {pytorch_accelerated.__version__}"


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Progress bars and prints still run, into /dev/null; warnings are hidden."""
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull), contextlib.redirect_stderr(devnull):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield


def bench_loop(args: argparse.Namespace, device: torch.device, mixed_precision: str) -> dict[str, Any]:
    """Per-step time of every runner, each run in lockstep with a hand-written loop."""
    steps, skip = (30, 5) if args.quick else (args.steps, 20)
    mlp_data = make_batches((64, 32), skip + steps + 1, device)
    cnn_data = make_batches((32, 3, 32, 32), skip + steps // 10 + 1, device)
    cases = [
        Case("tiny MLP", tiny_mlp(), mlp_data, device, mixed_precision),
        Case("small CNN", small_cnn(), cnn_data, device, mixed_precision),
    ]
    runners: dict[str, Runner] = {"hand-written loop (control)": run_hand_loop, "callbacks_kit Trainer": run_trainer}
    peers = {"PyTorch Lightning": lightning_runner(), "pytorch-accelerated": pytorch_accelerated_runner()}
    for label, (runner, _) in peers.items():
        if runner is not None and not args.no_peers:
            runners[label] = runner
    results: dict[str, Any] = {"warmup_steps": skip, "peers": {k: note for k, (_, note) in peers.items()}, "cases": []}
    for case in cases:
        data = Lockstep(case, skip)
        times: dict[str, list[tuple[float, float]]] = {label: [] for label in runners}
        labels = list(runners)
        with quiet():
            for label in labels:  # an untimed round: imports, first allocations
                runners[label](case, data)
            for repeat in range(args.repeats):
                for label in labels[repeat % len(labels) :] + labels[: repeat % len(labels)]:  # rotating order
                    gc.collect()
                    runners[label](case, data)
                    times[label].append(data.per_step())
        hand = [h for pairs in times.values() for _, h in pairs]
        rows = [
            {
                "runner": HAND,
                "median_s_per_step": statistics.median(hand),
                "min_s_per_step": min(hand),
                "ratio": 1.0,
                "overhead_us_per_step": 0.0,
            }
        ]
        for label, pairs in times.items():
            framework = [f for f, _ in pairs]
            rows.append(
                {
                    "runner": label,
                    "median_s_per_step": statistics.median(framework),
                    "min_s_per_step": min(framework),
                    # each run against the hand steps that ran beside it
                    "ratio": statistics.median(f / h for f, h in pairs),
                    "overhead_us_per_step": statistics.median(f - h for f, h in pairs) * 1e6,
                }
            )
        results["cases"].append(
            {
                "case": case.name,
                "batch_shape": list(case.batches[0][0].shape),
                "steps": len(case.batches) - 1 - skip,
                "repeats": args.repeats,
                "rows": rows,
            }
        )
    return results


# ------------------------------------------------------------------------------ 2. callbacks
@contextlib.contextmanager
def timed_events(records: dict[int, dict[str, Any]], timeline: dict[str, list[float]]) -> Iterator[None]:
    """Time every callback's every event, and note when each event starts and ends."""
    original = CallbackList.fire

    def fire(self: CallbackList, event: str, trainer: Trainer) -> None:
        timeline.setdefault(event, []).append(time.perf_counter())
        for callback in self:
            start = time.perf_counter()
            getattr(callback, event)(trainer)
            record = records.setdefault(id(callback), {"callback": type(callback).__name__, "calls": []})
            record["calls"].append((start, time.perf_counter() - start))
        timeline.setdefault(event + "/done", []).append(time.perf_counter())

    CallbackList.fire = fire  # type: ignore[method-assign]
    try:
        yield
    finally:
        CallbackList.fire = original  # type: ignore[method-assign]


def main_job_argv(args: argparse.Namespace) -> list[str]:
    """`callbacks-kit train` with its defaults for one epoch (smaller with --quick)."""
    argv = ["train", "--epochs", "1"]
    if args.quick:
        argv += ["--train-samples", "192", "--val-samples", "64", "--batch-size", "16", "--image-size", "32"]
    return argv


@contextlib.contextmanager
def patched_inspection(extra: Callable[[list[Callback]], list[Callback]]) -> Iterator[None]:
    """Let `extra` see (and add to) the callbacks the main job's `_inspection_callbacks` returns."""
    from callbacks_kit import cli

    original = cli._inspection_callbacks

    def inspection_callbacks(ns: argparse.Namespace, classes: Sequence[str]) -> list[Callback]:
        return extra(original(ns, classes))

    cli._inspection_callbacks = inspection_callbacks
    try:
        yield
    finally:
        cli._inspection_callbacks = original


def bench_callbacks(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """Run the main job for one epoch and time each of its callbacks."""
    from callbacks_kit import cli

    records: dict[int, dict[str, Any]] = {}
    timeline: dict[str, list[float]] = {}
    inspection: set[int] = set()

    def remember(callbacks: list[Callback]) -> list[Callback]:
        inspection.update(id(c) for c in callbacks)
        return callbacks

    argv = main_job_argv(args)
    with tempfile.TemporaryDirectory() as log_dir:
        ns = cli.build_parser().parse_args([*argv, "--log-dir", log_dir])
        with quiet(), patched_inspection(remember), timed_events(records, timeline):
            cli.train(ns)
    start, end = timeline["on_epoch_start"][0], timeline["on_epoch_end/done"][0]
    rows = []
    for key, record in records.items():
        in_epoch = [s for t, s in record["calls"] if start <= t <= end]
        working = [s for s in in_epoch if s > 1e-3]  # calls that did something (a no-op takes microseconds)
        rows.append(
            {
                "callback": record["callback"],
                "inspection": key in inspection or record["callback"] == "TensorBoardLogger",
                "epoch_s": sum(in_epoch),
                "calls_doing_work": len(working),
                "s_per_working_call": statistics.mean(working) if working else 0.0,
                "fit_start_end_s": sum(s for t, s in record["calls"] if not start <= t <= end),
            }
        )
    # The share of what the epoch takes without any inspection callback: the slowdown each one causes.
    bare = (end - start) - sum(r["epoch_s"] for r in rows if r["inspection"])
    for row in rows:
        row["share_of_epoch"] = row["epoch_s"] / bare
    return {
        "argv": argv,
        "image_size": ns.image_size or 64,
        "epoch_s": end - start,
        "epoch_without_inspection_s": bare,
        "batches": len(timeline.get("on_train_batch_start", [])),
        "rows": sorted(rows, key=lambda r: -r["epoch_s"]),
        "inspection_found": sorted(r["callback"] for r in rows if r["inspection"]),
    }, timeline


# ------------------------------------------------------------------------------ 3. input
def bench_input(
    args: argparse.Namespace, callbacks: dict[str, Any], timeline: dict[str, list[float]]
) -> dict[str, Any]:
    """Time waiting for data against time computing, for the main job's two data paths."""
    from callbacks_kit.data import default_workers

    # In the main job's epoch, between a step's end and the next step's start the loop only
    # fetches the next batch (workers: 0 for the built-in shapes).
    waits = [
        s - e for e, s in zip(timeline["on_train_batch_end/done"], timeline["on_train_batch_start"][1:], strict=False)
    ]
    steps = [e - s for s, e in zip(timeline["on_train_batch_start"], timeline["on_train_batch_end/done"], strict=False)]
    wait, step = statistics.median(waits), statistics.median(steps)
    shapes = {
        "image_size": callbacks["image_size"],
        "workers": 0,
        "data_s_per_batch": wait,
        "step_s": step,
        "input_share": wait / (wait + step),
    }
    return {"shapes": shapes, "image_folder": bench_image_folder(args, default_workers())}


def bench_image_folder(args: argparse.Namespace, workers: int) -> dict[str, Any]:
    """JPEGs through the main job's ImageFolder loader (default workers) against ResNet-18 steps."""
    import torchvision
    from PIL import Image

    from callbacks_kit.data import image_folder_datasets, make_loader

    n, batch, size = (24, 8, 112) if args.quick else (192, 32, 224)
    with tempfile.TemporaryDirectory() as root:
        g = torch.Generator().manual_seed(0)
        for i in range(n):
            folder = Path(root, "val" if i % 4 == 0 else "train", f"class{i % 3}")
            folder.mkdir(parents=True, exist_ok=True)
            pixels = (torch.rand(size * 8 // 7, size * 8 // 7, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)
        train_set, _, classes = image_folder_datasets(root, size)
        loader = make_loader(train_set, batch, shuffle=True, workers=workers)
        epoch_s = []
        for _ in range(2):  # the second epoch reuses the persistent workers
            start = time.perf_counter()
            count = sum(images.shape[0] for images, _ in loader)
            epoch_s.append(time.perf_counter() - start)
        del loader
    model = torchvision.models.resnet18(num_classes=len(classes))
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    images, targets = torch.randn(batch, 3, size, size), torch.randint(len(classes), (batch,))
    step_s = []
    for _ in range(3):
        start = time.perf_counter()
        nn.functional.cross_entropy(model(images), targets).backward()
        optimizer.step()
        optimizer.zero_grad()
        step_s.append(time.perf_counter() - start)
    load_rate, train_rate = count / epoch_s[-1], batch / statistics.median(step_s[1:])
    return {
        "image_size": size,
        "workers": workers,
        "images": count,
        "batch_size": batch,
        "load_images_per_s": load_rate,
        "first_epoch_s": epoch_s[0],
        "train_images_per_s": train_rate,
        "input_bound": load_rate < train_rate,
    }


# ------------------------------------------------------------------------------ 4. histograms
def bench_histograms(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """`SummaryWriter.add_histogram` against WeightHistograms' binning on the device."""
    try:
        from callbacks_kit.callbacks.histograms import WeightHistograms, compute_histograms, write_histogram
    except ImportError:
        return {"skipped": "callbacks_kit.callbacks.histograms is not there yet"}
    import torchvision
    from torch.utils.tensorboard import SummaryWriter

    repeats, bins = (1 if args.quick else 7), WeightHistograms().bins  # the callback's default
    # Both end with the bins on the host (no device sync needed); on a CPU, CPU time.
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    rows = []
    for name in ("resnet18",) if args.quick else ("resnet18", "resnet50"):
        params = [(n, p.detach()) for n, p in getattr(torchvision.models, name)().to(device).named_parameters()]
        stock, on_device = [], []
        with tempfile.TemporaryDirectory() as log_dir, SummaryWriter(log_dir) as writer:
            for step in range(repeats + 1):  # round 0 warms up
                start = clock()
                for tag, p in params:
                    writer.add_histogram(f"stock/{tag}", p, step)
                # The writer's thread serializes events later: flush so that each side pays for its
                # own events (process_time counts every thread), not for the other side's.
                writer.flush()
                middle = clock()
                for (tag, _), histogram in zip(params, compute_histograms([p for _, p in params], bins), strict=True):
                    if histogram is not None:
                        write_histogram(writer, f"device/{tag}", histogram, step)
                writer.flush()
                if step:
                    stock.append(middle - start)
                    on_device.append(clock() - middle)
        stock_s, device_s = statistics.median(stock), statistics.median(on_device)
        rows.append(
            {
                "model": name,
                "tensors": len(params),
                "values": sum(p.numel() for _, p in params),
                "add_histogram_s": stock_s,
                "device_s": device_s,
                "speedup": statistics.median(s / d for s, d in zip(stock, on_device, strict=True)),
            }
        )
    return {"repeats": repeats, "bins": bins, "rows": rows}


# ------------------------------------------------------------------------------ 5. syncs
def bench_syncs(args: argparse.Namespace, device: torch.device, mixed_precision: str) -> dict[str, Any]:
    """Syncs per non-logging step: counted on a CPU, caught by CUDA's sync debug mode on a GPU."""
    rows = []
    batches = make_batches((16, 32), 12, device)
    for label, with_logger in (("default callbacks", False), ("+ TensorBoardLogger", True)):
        with tempfile.TemporaryDirectory() as log_dir, quiet():
            torch.manual_seed(0)
            model = tiny_mlp()
            trainer = Trainer(
                model,
                torch.optim.AdamW(model.parameters(), lr=LR),
                nn.CrossEntropyLoss(),
                callbacks=[TensorBoardLogger(log_dir)] if with_logger else [],
                cpu=device.type == "cpu",
                mixed_precision=mixed_precision,
                log_every_n_steps=4,
            )
            if device.type == "cuda":
                row = cuda_sync_check(trainer, batches)
            else:
                row = summarize_syncs(syncs_per_step(trainer, batches))
        rows.append({"setup": label, "budgeted": True, **row})
    if device.type == "cpu":
        rows.append({"setup": "main job callbacks", "budgeted": False, **main_job_syncs(args)})
    return {"rows": rows}


def summarize_syncs(steps: list[tuple[bool, list[str]]]) -> dict[str, Any]:
    quiet_steps = [events for is_log, events in steps if not is_log]
    log_steps = [events for is_log, events in steps if is_log]
    return {
        "method": "HostSyncCounter",
        "non_logging_steps": len(quiet_steps),
        "max_syncs_non_logging": max((len(e) for e in quiet_steps), default=0),
        "syncs_per_logging_step": max((len(e) for e in log_steps), default=0),
        "where": sorted({w for e in quiet_steps for w in e}),
    }


def main_job_syncs(args: argparse.Namespace) -> dict[str, Any]:
    """The same count over a few steps of the main job with all its default callbacks."""
    from callbacks_kit import cli

    counter, marks = HostSyncCounter(), []

    def add_boundaries(callbacks: list[Callback]) -> list[Callback]:
        return [*callbacks, StepBoundary(counter, marks, first=True), StepBoundary(counter, marks, first=False)]

    argv = [
        "train",
        "--epochs",
        "1",
        "--train-samples",
        "96",
        "--val-samples",
        "32",
        "--batch-size",
        "16",
        "--image-size",
        "32",
        "--log-every",
        "3",
    ]
    with tempfile.TemporaryDirectory() as log_dir:
        with quiet(), patched_inspection(add_boundaries), counter:
            cli.train(cli.build_parser().parse_args([*argv, "--log-dir", log_dir]))
    return {**summarize_syncs(step_syncs(counter, marks)), "argv": argv}


class _SyncDebug(Callback):
    """CUDA's sync debug mode on "error" for the non-logging steps after the first."""

    order = -(10**9)

    def on_train_batch_start(self, trainer: Trainer) -> None:
        due = (trainer.state.global_step + 1) % trainer.log_every_n_steps == 0
        torch.cuda.set_sync_debug_mode("default" if due or trainer.state.batch_idx == 0 else "error")

    def on_train_batch_end(self, trainer: Trainer) -> None:
        if trainer.state.batch_idx + 1 == trainer.state.batches_per_epoch:
            torch.cuda.set_sync_debug_mode("default")  # the epoch's end reads its mean loss


def cuda_sync_check(trainer: Trainer, batches: list[Batch]) -> dict[str, Any]:
    """Fit with CUDA's sync debug mode on "error" during non-logging steps: any sync raises."""
    trainer.callbacks.append(_SyncDebug())
    method = 'torch.cuda.set_sync_debug_mode("error")'
    try:
        trainer.fit(batches)
        return {"method": method, "max_syncs_non_logging": 0}
    except RuntimeError as exc:
        return {"method": method, "max_syncs_non_logging": 1, "where": [str(exc).splitlines()[0]]}
    finally:
        torch.cuda.set_sync_debug_mode("default")


# ------------------------------------------------------------------------------ 6. throughput
class _EpochEndClock(Callback):
    """Notes when the epoch's last callback is done (after validation and epoch-end images)."""

    order = 10**9

    def __init__(self) -> None:
        self.done = 0.0

    def on_epoch_end(self, trainer: Trainer) -> None:
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        self.done = time.perf_counter()


class _StartClock:
    """Batches that note when batch `skip` is handed out (after a sync on a GPU)."""

    def __init__(self, batches: list[Batch], skip: int) -> None:
        self.batches, self.skip, self.start = batches, skip, 0.0

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[Batch]:
        for i, batch in enumerate(self.batches):
            if i == self.skip:
                if batch[0].is_cuda:
                    torch.cuda.synchronize()
                self.start = time.perf_counter()
            yield batch


def bench_throughput(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Images/s of the hand loop and of the Trainer with the main job's inspection callbacks.

    ResNet-50 on synthetic 224 px data on a GPU (a ResNet-18 smoke run on a CPU). The
    Trainer's time runs to the end of the epoch: a small validation and the epoch-end
    inspection (histograms, kernels, feature maps, Grad-CAM, confusion matrix) count.
    """
    import torchvision

    from callbacks_kit import cli

    gpu = device.type == "cuda"
    name, size, batch, steps, skip = ("resnet50", 224, args.gpu_batch, 60, 10) if gpu else ("resnet18", 32, 8, 6, 2)
    classes = [f"class{i}" for i in range(10)]
    g = torch.Generator().manual_seed(0)
    train = [
        (torch.randn(batch, 3, size, size, generator=g).to(device), torch.randint(10, (batch,), generator=g).to(device))
    ] * (skip + steps)
    val_set = TensorDataset(torch.randn(2 * batch, 3, size, size, generator=g), torch.randint(10, (2 * batch,)))
    rows = []
    for precision in ("bf16", "fp16") if gpu else ("no",):
        torch.manual_seed(0)
        template = getattr(torchvision.models, name)(num_classes=len(classes))
        case = Case(name, template, train, device, precision)
        AcceleratorState._reset_state()
        GradientState._reset_state()
        hand = HandLoop(case)
        for i, (inputs, targets) in enumerate(train):
            if i == skip:
                if gpu:
                    torch.cuda.synchronize()
                start = time.perf_counter()
            hand.step(inputs, targets)
        if gpu:
            torch.cuda.synchronize()
        hand_rate = steps * batch / (time.perf_counter() - start)
        del hand
        ns = cli.build_parser().parse_args(["train"])
        with tempfile.TemporaryDirectory() as log_dir, quiet():
            model, optimizer = case.fresh()
            clock, end = _StartClock(train, skip), _EpochEndClock()
            callbacks = [TensorBoardLogger(log_dir), *cli._inspection_callbacks(ns, classes), end]
            trainer = Trainer(
                model,
                optimizer,
                nn.CrossEntropyLoss(),
                callbacks=callbacks,
                cpu=not gpu,
                mixed_precision=precision,
                log_every_n_steps=ns.log_every,
            )
            trainer.fit(clock, DataLoader(val_set, batch_size=batch))
        trainer_rate = steps * batch / (end.done - clock.start)
        rows.append(
            {
                "model": name,
                "precision": precision,
                "batch_size": batch,
                "image_size": size,
                "steps": steps,
                "hand_images_per_s": hand_rate,
                "trainer_images_per_s": trainer_rate,
                "ratio": hand_rate / trainer_rate,
            }
        )
    return {"rows": rows}


# ------------------------------------------------------------------------------ report
def machine() -> dict[str, Any]:
    import accelerate

    cpuinfo = Path("/proc/cpuinfo")
    names = (
        [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")]
        if cpuinfo.exists()
        else []
    )
    return {
        "cpu": names[0] if names else platform.processor(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "accelerate": accelerate.__version__,
        "platform": platform.platform(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print(f"\n{title}")
    for n, row in enumerate(cells):
        print(
            "  "
            + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        )
        if n == 0:
            print("  " + "  ".join("-" * w for w in widths))


def check(
    budgets: list[dict[str, Any]],
    name: str,
    value: float,
    limit: float,
    *,
    at_least: bool = False,
    enforced: bool = True,
) -> None:
    passed = value >= limit if at_least else value <= limit
    budgets.append({"budget": name, "value": value, "limit": limit, "passed": passed, "enforced": enforced})


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="a fast smoke run: tiny sizes, timing budgets not enforced"
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--repeats", type=int, default=None, help="runs per runner and model (15; 3 with --quick)")
    parser.add_argument("--steps", type=int, default=400, help="timed steps per run on the MLP (a tenth on the CNN)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for every section")
    parser.add_argument("--no-peers", action="store_true", help="leave Lightning and pytorch-accelerated out")
    parser.add_argument("--throughput", action="store_true", help="run section 6 on a CPU too (a smoke run)")
    parser.add_argument("--gpu-batch", type=int, default=256, help="ResNet-50 batch size of section 6 on a GPU")
    parser.add_argument("--skip", nargs="*", default=[], choices=["loop", "callbacks", "histograms", "syncs"])
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (3 if args.quick else 15)
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    mixed_precision = "bf16" if device.type == "cuda" else "no"
    enforce = not args.quick
    results: dict[str, Any] = {
        "machine": machine(),
        "device": str(device),
        "mixed_precision": mixed_precision,
        "threads": args.threads,
        "quick": args.quick,
        "budgets": [],
        "command": " ".join(["python scripts/benchmark.py", *(argv or sys.argv[1:])]),
    }
    budgets = results["budgets"]
    m = results["machine"]
    print(
        f"callbacks_kit benchmark on {device}: {m['cpu']}, {m['cpus']} CPUs, {args.threads} torch thread(s), "
        f"{m['gpu'] or 'no GPU'}; torch {m['torch']}, accelerate {m['accelerate']}"
        + ("\n--quick: a smoke run, timings mean nothing" if args.quick else "")
    )

    if "loop" not in args.skip:
        loop = results["loop"] = bench_loop(args, device, mixed_precision)
        for case in loop["cases"]:
            print_table(
                f"1. Loop overhead: {case['case']} {tuple(case['batch_shape'])}, AdamW, precision "
                f"{mixed_precision}; {'CPU' if device.type == 'cpu' else 'wall'} time per optimizer step, median of "
                f"{case['repeats']} runs of {case['steps']} steps, each in lockstep with a hand-written loop",
                ["runner", "ms/step", "min ms/step", "x hand loop", "overhead us/step"],
                [
                    [
                        r["runner"],
                        f"{r['median_s_per_step'] * 1e3:.3f}",
                        f"{r['min_s_per_step'] * 1e3:.3f}",
                        f"{r['ratio']:.3f}",
                        f"{r['overhead_us_per_step']:+.1f}",
                    ]
                    for r in case["rows"]
                ],
            )
            trainer = next(r for r in case["rows"] if r["runner"] == "callbacks_kit Trainer")
            check(
                budgets,
                f"Trainer / hand loop, {case['case']}",
                trainer["ratio"],
                LOOP_BUDGETS[case["case"]],
                enforced=enforce,
            )
        for peer, note in loop["peers"].items():
            print(f"  {peer}: {note}" + (" (left out: --no-peers)" if args.no_peers else ""))

    if "callbacks" not in args.skip:
        callbacks, timeline = bench_callbacks(args)
        results["callbacks"] = callbacks
        print_table(
            f"2. Callbacks of the main job (callbacks-kit {' '.join(callbacks['argv'])}: ResNet-18, "
            f"{callbacks['batches']} batches + validation): epoch {callbacks['epoch_s']:.1f} s, "
            f"{callbacks['epoch_without_inspection_s']:.1f} s without the inspection callbacks",
            [
                "callback",
                "inspection",
                "calls doing work",
                "ms/call",
                "s in epoch",
                "share of epoch",
                "fit start/end s",
            ],
            [
                [
                    r["callback"],
                    "yes" if r["inspection"] else "no",
                    r["calls_doing_work"],
                    f"{r['s_per_working_call'] * 1e3:.1f}",
                    f"{r['epoch_s']:.3f}",
                    f"{r['share_of_epoch']:.2%}",
                    f"{r['fit_start_end_s']:.3f}",
                ]
                for r in callbacks["rows"]
            ],
        )
        print("  share: seconds in the epoch / the epoch without inspection callbacks; a call 'does work' above 1 ms")
        for row in callbacks["rows"]:
            if row["inspection"]:
                check(
                    budgets,
                    f"{row['callback']}, share of an epoch",
                    row["share_of_epoch"],
                    CALLBACK_SHARE_BUDGET,
                    enforced=enforce,
                )
        inputs = results["input"] = bench_input(args, callbacks, timeline)
        s, f = inputs["shapes"], inputs["image_folder"]
        print_table(
            "3. Input: waiting for data against computing (ResNet-18)",
            ["data", "workers", "loading", "training", "verdict"],
            [
                [
                    f"main job, built-in shapes {s['image_size']} px",
                    s["workers"],
                    f"{s['data_s_per_batch'] * 1e3:.1f} ms/batch",
                    f"{s['step_s'] * 1e3:.1f} ms/step",
                    f"{s['input_share']:.1%} of the loop waits for data",
                ],
                [
                    f"--data ImageFolder {f['image_size']} px, batch {f['batch_size']}",
                    f["workers"],
                    f"{f['load_images_per_s']:.0f} images/s",
                    f"{f['train_images_per_s']:.0f} images/s",
                    "input-bound" if f["input_bound"] else "not input-bound",
                ],
            ],
        )

    if "histograms" not in args.skip:
        histograms = results["histograms"] = bench_histograms(args, device)
        if "skipped" in histograms:
            print(f"\n4. Histograms: skipped, {histograms['skipped']}")
        else:
            print_table(
                f"4. Histograms of every parameter, {histograms['bins']} bins, median of {histograms['repeats']}",
                ["model", "tensors", "values", "add_histogram ms", "device + raw ms", "speed-up"],
                [
                    [
                        r["model"],
                        r["tensors"],
                        f"{r['values'] / 1e6:.1f} M",
                        f"{r['add_histogram_s'] * 1e3:.0f}",
                        f"{r['device_s'] * 1e3:.0f}",
                        f"{r['speedup']:.1f}x",
                    ]
                    for r in histograms["rows"]
                ],
            )
            for row in histograms["rows"]:
                check(
                    budgets,
                    f"device histograms speed-up, {row['model']}",
                    row["speedup"],
                    HISTOGRAM_SPEEDUP_BUDGET,
                    at_least=True,
                    enforced=enforce and device.type == "cpu",
                )

    if "syncs" not in args.skip:
        syncs = results["syncs"] = bench_syncs(args, device, mixed_precision)
        print_table(
            "5. Host-device syncs per training step (log steps: every 4 steps; main job: every 3)",
            ["setup", "method", "non-logging steps", "max syncs", "syncs per logging step"],
            [
                [
                    r["setup"],
                    r["method"],
                    r.get("non_logging_steps", "-"),
                    r["max_syncs_non_logging"],
                    r.get("syncs_per_logging_step", "-"),
                ]
                for r in syncs["rows"]
            ],
        )
        for row in syncs["rows"]:
            for where in row.get("where", []):
                print(f"  {row['setup']}: a non-logging step syncs: {where}")
            if row["budgeted"]:
                check(budgets, f"syncs per non-logging step, {row['setup']}", row["max_syncs_non_logging"], 0)

    if device.type == "cuda" or args.throughput:
        throughput = results["throughput"] = bench_throughput(args, device)
        print_table(
            "6. Throughput: hand-written loop against the Trainer with the main job's inspection callbacks "
            "(one epoch, its validation and epoch-end images included)",
            ["model", "precision", "batch", "hand images/s", "Trainer images/s", "hand / Trainer"],
            [
                [
                    r["model"],
                    r["precision"],
                    r["batch_size"],
                    f"{r['hand_images_per_s']:.0f}",
                    f"{r['trainer_images_per_s']:.0f}",
                    f"{r['ratio']:.3f}",
                ]
                for r in throughput["rows"]
            ],
        )
    else:
        print("\n6. Throughput: no GPU here; run with a GPU (or --throughput for a CPU smoke run)")

    print_table(
        "Budgets" + ("" if enforce else " (--quick: timing budgets shown, not enforced)"),
        ["budget", "value", "limit", "result"],
        [
            [
                b["budget"],
                f"{b['value']:.3f}",
                f"{b['limit']}",
                ("pass" if b["passed"] else "FAIL") + ("" if b["enforced"] else " (not enforced)"),
            ]
            for b in budgets
        ],
    )
    failed = [b for b in budgets if b["enforced"] and not b["passed"]]
    results["passed"] = not failed
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=str))
        print(f"\nresults written to {args.json}")
    print("\nall budgets pass" if not failed else f"\n{len(failed)} budget(s) missed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
