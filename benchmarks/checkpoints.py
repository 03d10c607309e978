"""Section 7, checkpoints: how long training stalls per checkpoint save, synchronous against asynchronous.

The main job's ResNet-18 with AdamW (its checkpoint holds the weights and both moments, about
134 MB) trains on pre-made batches of the main job's shape; one run saves every
`SAVE_EVERY` steps with `ModelCheckpoint(async_save=False)`, one with `async_save=True`, one
does not save, and the second save of each is measured (the first allocates the host buffers
that every later save reuses); the three
runs take turns, `--repeats` times (5 at least), so a busy machine slows them alike. The stall
of a save is the wall time of the same steps (the save's step and those after it, long enough
for a background save to finish) minus that of the run without a save: what the loop loses,
whether it waits for the save or competes with it for the machine. Also shown: how long the
loop is blocked inside the save call (for the asynchronous save, the host copy of the state).
"""

from __future__ import annotations

import copy
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.common import LR, Bench, print_table, quiet, synced_time
from benchmarks.workloads import make_batches
from callbacks_kit import Callback, ModelCheckpoint, Trainer
from callbacks_kit.compat import reset_accelerator_singletons
from callbacks_kit.finetune import build_classifier

ASYNC_STALL_BUDGET = 0.15  # the asynchronous save's stall / the synchronous save's, at most
MODES = ("no save", "synchronous save", "asynchronous save")


class _Clock(Callback):
    """Notes the time at every `on_train_batch_end`, before (`first`) or after every other callback.

    Also notes whether the checkpoint folder's `last.json` exists yet (an asynchronous save committed).
    """

    def __init__(self, device: torch.device, first: bool, folder: str) -> None:
        self.order = -(10**9) if first else 10**9
        self.device, self.folder = device, Path(folder)
        self.times: list[float] = []
        self.committed: list[bool] = []

    def on_train_batch_end(self, trainer: Trainer) -> None:
        self.times.append(synced_time(self.device))
        self.committed.append((self.folder / "last.json").exists())


def _train(template: nn.Module, batches: list[Any], mode: str, save_every: int, folder: str, bench: Bench) -> dict:
    """One run; the window from the end of the step before the second save to the end of the last step."""
    reset_accelerator_singletons()
    model = copy.deepcopy(template)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    before, after = _Clock(bench.device, True, folder), _Clock(bench.device, False, folder)
    callbacks: list[Callback] = [before, after]
    if mode != "no save":
        callbacks.append(ModelCheckpoint(folder, every_n_steps=save_every, async_save=mode == "asynchronous save"))
    trainer = Trainer(model, optimizer, nn.CrossEntropyLoss(), callbacks=callbacks, progress_bar=False,
                      cpu=bench.device.type == "cpu", mixed_precision=bench.mixed_precision,
                      log_every_n_steps=10**6)  # fmt: skip
    trainer.fit(batches, epochs=1)
    i = 2 * save_every - 1  # index of the measured save's step
    return {"window_s": after.times[-1] - after.times[i - 1], "save_call_s": after.times[i] - before.times[i],
            "committed_in_window": after.committed[-1]}  # fmt: skip


def bench_checkpoints(bench: Bench, template: nn.Module | None = None) -> dict[str, Any]:
    """Per repeat, one run of each mode in turn (rotating the order); medians over the repeats.

    `template`: another model than the main job's ResNet-18 (a smoke run).
    """
    args = bench.args
    batch, size = (8, 32) if args.quick else (getattr(args, "checkpoint_batch", 64), 64)
    save_every, tail = (2, 2) if args.quick else (4, 7)  # tail: steps after the measured save
    steps = 2 * save_every + tail
    repeats = max(args.repeats if args.quick else max(args.repeats // 3, 5), 1)
    if template is None:
        template = build_classifier("resnet18", 10)  # the main job's has one output per shape class; 10 here
    batches = make_batches((batch, 3, size, size), steps, bench.device)
    state_mb = sum(t.numel() * t.element_size() for t in template.state_dict().values()) * 3 / 1e6
    runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory() as root, quiet():
        _train(template, batches[:2], "no save", 1, f"{root}/warmup", bench)  # imports, first allocations
        for repeat in range(repeats):
            order = MODES[repeat % 3 :] + MODES[: repeat % 3]
            for mode in order:
                runs[mode].append(_train(template, batches, mode, save_every, f"{root}/{repeat}-{mode[:5]}", bench))
    base = [r["window_s"] for r in runs["no save"]]
    rows = []
    for mode in MODES:
        windows = [r["window_s"] for r in runs[mode]]
        stalls = [w - b for w, b in zip(windows, base, strict=True)]
        rows.append({"mode": mode, "window_s": statistics.median(windows), "stall_s": statistics.median(stalls),
                     "save_call_s": statistics.median(r["save_call_s"] for r in runs[mode]),
                     "committed_in_window": all(r["committed_in_window"] for r in runs[mode])})  # fmt: skip
    return {"model": type(template).__name__, "batch_shape": [batch, 3, size, size], "window_steps": tail + 1,
            "repeats": repeats, "checkpoint_mb": state_mb, "rows": rows}  # fmt: skip


def run(bench: Bench) -> None:
    """Measure, print the table, check the asynchronous stall against the synchronous one."""
    result = bench.results["checkpoints"] = bench_checkpoints(bench)
    rows = {r["mode"]: r for r in result["rows"]}
    sync, asynchronous = rows["synchronous save"], rows["asynchronous save"]
    ratio = asynchronous["stall_s"] / sync["stall_s"] if sync["stall_s"] > 0 else float("inf")
    result["async_over_sync"] = ratio
    print_table(
        f"7. Checkpoint stall: {result['model']} + AdamW ({result['checkpoint_mb']:.0f} MB of state), batches "
        f"{tuple(result['batch_shape'])}; median of {result['repeats']} turns; window: the save's step and the "
        f"{result['window_steps'] - 1} after it",
        ["mode", "window s", "stall per save s", "loop blocked in the save call s"],
        [
            [r["mode"], f"{r['window_s']:.3f}", f"{r['stall_s']:+.3f}", f"{r['save_call_s']:.3f}"]
            for r in result["rows"]
        ],
    )
    print(f"  asynchronous stall / synchronous stall: {ratio:.3f}")
    if not asynchronous["committed_in_window"]:
        print("  WARNING: an asynchronous save was not committed by the window's end: its stall is a lower bound")
    bench.check("checkpoint stall, async / sync save", ratio, ASYNC_STALL_BUDGET, enforced=bench.enforce)
