"""Section 7, checkpoints: how long training stalls per checkpoint save, synchronous against asynchronous.

The main job's ResNet-18 with AdamW (its checkpoint holds the weights and both moments, about
134 MB) trains on pre-made batches; one run saves every `SAVE_EVERY` steps with
`ModelCheckpoint(async_save=False)`, one with `async_save=True`, one does not save, and the
second save of each is measured (the first allocates the host buffers that every later save
reuses). The three runs take turns, `--repeats` times (5 at least), so a busy machine slows
them alike. The stall of a save is the wall time of the same steps minus that of the run
without a save: what the loop loses, whether it waits for the save or competes with it for
the machine. The window is the save's step and the steps after it up to the one at whose end
the turn's asynchronous save has committed (`last.json` names it): the whole background save,
and no step more, since every step adds the machine's step-to-step noise (about 15% of a step
on the 2-core guest of 2026-12-02) and nothing of the save. The batch is 16 images of 64 px
(`--checkpoint-batch`) for the same reason: the state saved is the main job's, the steps are
shorter. Also shown: how long the loop is blocked inside the save call (for the asynchronous
save, the finite check and the host copy of the state).
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
from callbacks_kit.checkpoint.store import read_pointer
from callbacks_kit.compat import reset_accelerator_singletons
from callbacks_kit.finetune import build_classifier

ASYNC_STALL_BUDGET = 0.15  # the asynchronous save's stall / the synchronous save's, at most
MODES = ("no save", "synchronous save", "asynchronous save")


class _Clock(Callback):
    """Notes the time at every `on_train_batch_end`, before (`first`) or after every other callback.

    The last one also notes which checkpoint the folder's `last.json` names at that moment.
    """

    def __init__(self, device: torch.device, first: bool, folder: str) -> None:
        self.order = -(10**9) if first else 10**9
        self.device, self.folder, self.first = device, Path(folder), first
        self.times: list[float] = []
        self.pointers: list[str | None] = []

    def on_train_batch_end(self, trainer: Trainer) -> None:
        self.times.append(synced_time(self.device))
        if not self.first:
            self.pointers.append(read_pointer(self.folder))


def _train(template: nn.Module, batches: list[Any], mode: str, save_every: int, folder: str, bench: Bench) -> dict:
    """One run: its step-end times, the time spent in the measured save's call, the step its save committed at."""
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
    measured = f"step={2 * save_every:08d}"
    committed = [j for j in range(i, len(after.times)) if measured in (after.pointers[j] or "")]
    return {"times": after.times, "save_call_s": after.times[i] - before.times[i],
            "committed_at": committed[0] if committed else None}  # fmt: skip


def bench_checkpoints(bench: Bench, template: nn.Module | None = None) -> dict[str, Any]:
    """Per repeat, one run of each mode in turn (rotating the order); medians over the repeats.

    `template`: another model than the main job's ResNet-18 (a smoke run).
    """
    args = bench.args
    batch, size = (8, 32) if args.quick else (getattr(args, "checkpoint_batch", 16), 64)
    # tail: steps after the measured save, the most a window has; a GPU step is far shorter than the save
    save_every, tail = (2, 2) if args.quick else (4, 7 if bench.device.type == "cpu" else 200)
    steps = 2 * save_every + tail
    i = 2 * save_every - 1  # index of the measured save's step
    repeats = max(args.repeats if args.quick else max(args.repeats // 2, 5), 1)
    if template is None:
        template = build_classifier("resnet18", 10)  # the main job's has one output per shape class; 10 here
    batches = make_batches((batch, 3, size, size), steps, bench.device)
    state_mb = sum(t.numel() * t.element_size() for t in template.state_dict().values()) * 3 / 1e6
    turns: list[dict[str, dict]] = []
    with tempfile.TemporaryDirectory() as root, quiet():
        _train(template, batches[:2], "no save", 1, f"{root}/warmup", bench)  # imports, first allocations
        for repeat in range(repeats):
            order = MODES[repeat % 3 :] + MODES[: repeat % 3]
            turns.append({m: _train(template, batches, m, save_every, f"{root}/{repeat}-{m[:5]}", bench)
                          for m in order})  # fmt: skip
    ends = [t["asynchronous save"]["committed_at"] for t in turns]
    last = steps - 1
    window_steps = [(last if end is None else end) - (i - 1) for end in ends]

    def window(run: dict, k: int) -> float:
        return run["times"][i - 1 + k] - run["times"][i - 1]

    rows = []
    for mode in MODES:
        windows = [window(t[mode], k) for t, k in zip(turns, window_steps, strict=True)]
        stalls = [w - window(t["no save"], k) for t, k, w in zip(turns, window_steps, windows, strict=True)]
        calls = [t[mode]["save_call_s"] for t in turns]
        rows.append({"mode": mode, "window_s": statistics.median(windows), "stall_s": statistics.median(stalls),
                     "stalls_s": stalls, "save_call_s": statistics.median(calls)})  # fmt: skip
    return {"model": type(template).__name__, "batch_shape": [batch, 3, size, size], "window_steps": window_steps,
            "repeats": repeats, "checkpoint_mb": state_mb, "rows": rows,
            "committed_in_window": all(end is not None for end in ends)}  # fmt: skip


def run(bench: Bench) -> None:
    """Measure, print the table, check the asynchronous stall against the synchronous one."""
    result = bench.results["checkpoints"] = bench_checkpoints(bench)
    rows = {r["mode"]: r for r in result["rows"]}
    sync, asynchronous = rows["synchronous save"], rows["asynchronous save"]
    ratio = asynchronous["stall_s"] / sync["stall_s"] if sync["stall_s"] > 0 else float("inf")
    result["async_over_sync"] = ratio
    steps = result["window_steps"]
    print_table(
        f"7. Checkpoint stall: {result['model']} + AdamW ({result['checkpoint_mb']:.0f} MB of state), batches "
        f"{tuple(result['batch_shape'])}; median of {result['repeats']} turns; window: the save's step and the "
        f"steps until the asynchronous save committed ({min(steps)} to {max(steps)} steps in all)",
        ["mode", "window s", "stall per save s", "loop blocked in the save call s"],
        [
            [r["mode"], f"{r['window_s']:.3f}", f"{r['stall_s']:+.3f}", f"{r['save_call_s']:.3f}"]
            for r in result["rows"]
        ],
    )
    print(f"  asynchronous stall / synchronous stall: {ratio:.3f}")
    if not result["committed_in_window"]:
        print("  WARNING: an asynchronous save was not committed by the run's end: its stall is a lower bound")
    bench.check("checkpoint stall, async / sync save", ratio, ASYNC_STALL_BUDGET, enforced=bench.enforce)
