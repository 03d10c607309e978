"""Section 7, checkpoints: how long training stalls per checkpoint save, against one copy of the state.

The main job's ResNet-18 with AdamW (its checkpoint holds the weights and both moments, about
134 MB) trains on pre-made batches; one run saves every `save_every` steps with
`ModelCheckpoint(async_save=False)`, one with `async_save=True`, one does not save. The three
runs take turns, `--repeats` times (5 at least), so a busy machine slows them alike. Every
save but a run's first (which allocates the host buffers that the later ones reuse) is
measured within its own run: its window is the save's step and the steps after it up to the
one at whose end the save had committed (`last.json` names it: the whole background save of
an asynchronous one, the save's step alone for a synchronous one), and its stall is the
window's wall time minus as many of the run's median clean steps (those in no window). The
same sum over the same steps of the run without saves is the control: what the method reads
where there is nothing to find, the noise of the machine. A reference taken within the run,
not from another run, leaves out the run-to-run differences of a shared machine (20% and more
between two runs' median steps under load, where a save's stall is a few percent of a step).

The floor, measured in the same turn from the asynchronous run's model and optimizer: one
copy of their whole state into preallocated host buffers, tensor by tensor, which is what any
asynchronous save must at least make the loop wait for on a CPU (on a GPU, the device-to-host
copy). Also shown: how long the loop is blocked inside the save call (for the asynchronous
save, the finite check, the host copy of the state and the JSON states). The batch is 16
images of 64 px (`--checkpoint-batch`): the state saved is the main job's, the steps shorter.
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
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
ASYNC_FLOOR_BUDGET = 2.0  # the asynchronous save's stall / one copy of the state into preallocated buffers, at most
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


def state_floor(model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device, copies: int = 5) -> float:
    """Seconds to copy the model's and optimizer's whole state into preallocated host buffers (median of `copies`)."""
    tensors = list(model.state_dict().values())
    for state in optimizer.state_dict()["state"].values():
        tensors += [value for value in state.values() if isinstance(value, torch.Tensor)]
    pin = device.type == "cuda"
    buffers = [torch.empty(t.shape, dtype=t.dtype, pin_memory=pin) for t in tensors]
    times = []
    for _ in range(copies + 1):  # the first touches the new buffers' pages
        start = synced_time(device)
        for buffer, tensor in zip(buffers, tensors, strict=True):
            buffer.copy_(tensor, non_blocking=pin)
        times.append(synced_time(device) - start)
    return statistics.median(times[1:])


def _train(template: nn.Module, batches: list[Any], mode: str, save_every: int, folder: str, bench: Bench) -> dict:
    """One run: its step durations, the measured saves' windows and calls; the floor after an asynchronous one."""
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
    times = after.times
    steps = [times[k] - times[k - 1] for k in range(1, len(times))]  # steps[k - 1]: the step that ended at times[k]
    windows, calls = [], []
    for i in range(2 * save_every - 1, len(times) - save_every + 1, save_every):  # a save's step, the first aside
        name = f"step={i + 1:08d}"
        ends = [j for j in range(i, i + save_every) if name in (after.pointers[j] or "")]
        windows.append((i, ends[0] if ends else None))  # None: not committed within the save interval
        calls.append(times[i] - before.times[i])
    floor = state_floor(model, optimizer, bench.device) if mode == "asynchronous save" else None
    return {"steps": steps, "windows": windows, "save_calls_s": calls, "floor_s": floor}


def _stalls(run: dict, windows: list[tuple[int, int]]) -> list[float]:
    """Each window's wall time minus as many of the run's median clean steps (its own reference).

    Clean: the steps after the first measured save's (before it: the first steps and the first
    save, which allocates) that are in no window.
    """
    steps = run["steps"]
    inside = {k for i, j in windows for k in range(i, j + 1)}
    clean = [steps[k - 1] for k in range(windows[0][0], len(steps) + 1) if k not in inside]
    reference = statistics.median(clean or steps)  # a smoke run may have no clean step
    return [sum(steps[k - 1] for k in range(i, j + 1)) - (j - i + 1) * reference for i, j in windows]


def bench_checkpoints(bench: Bench, template: nn.Module | None = None) -> dict[str, Any]:
    """Per repeat, one run of each mode in turn (rotating the order); medians over every measured save.

    `template`: another model than the main job's ResNet-18 (a smoke run).
    """
    args = bench.args
    batch, size = (8, 32) if args.quick else (getattr(args, "checkpoint_batch", 16), 64)
    # a GPU step is far shorter than a background save: a longer interval lets it commit within it
    save_every, measured = (3, 1) if args.quick else (6 if bench.device.type == "cpu" else 100, 4)
    steps = save_every * (measured + 2) - 1  # the first save, the measured ones, and the steps after the last
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
    uncommitted = sum(j is None for turn in turns for _, j in turn["asynchronous save"]["windows"])
    rows = []
    for mode in MODES:
        stalls, lengths = [], []
        for turn in turns:
            # the control is read over the asynchronous run's windows; a save not committed in its interval, over all
            source = turn["asynchronous save" if mode == "no save" else mode]["windows"]
            windows = [(i, save_every - 1 + i if j is None else j) for i, j in source]
            stalls += _stalls(turn[mode], windows)
            lengths += [j - i + 1 for i, j in windows]
        calls = [c for turn in turns for c in turn[mode]["save_calls_s"]]
        rows.append({"mode": mode, "stall_s": statistics.median(stalls), "stalls_s": stalls,
                     "window_steps": statistics.median(lengths), "save_call_s": statistics.median(calls)})  # fmt: skip
    floors = [turn["asynchronous save"]["floor_s"] for turn in turns]
    step_s = statistics.median(s for turn in turns for s in turn["no save"]["steps"])
    return {"model": type(template).__name__, "batch_shape": [batch, 3, size, size], "save_every": save_every,
            "measured_per_run": measured, "repeats": repeats, "checkpoint_mb": state_mb, "rows": rows,
            "floor_s": statistics.median(floors), "floors_s": floors, "step_s": step_s,
            "uncommitted": uncommitted}  # fmt: skip


def run(bench: Bench) -> None:
    """Measure, print the table, check the asynchronous stall against the synchronous one and the floor."""
    started = time.perf_counter()
    result = bench.results["checkpoints"] = bench_checkpoints(bench)
    rows = {r["mode"]: r for r in result["rows"]}
    sync, asynchronous = rows["synchronous save"]["stall_s"], rows["asynchronous save"]["stall_s"]
    floor = result["floor_s"]
    result["async_over_sync"] = asynchronous / sync if sync > 0 else float("inf")
    result["async_over_floor"] = asynchronous / floor if floor > 0 else float("inf")
    print_table(
        f"7. Checkpoint stall: {result['model']} + AdamW ({result['checkpoint_mb']:.0f} MB of state), batches "
        f"{tuple(result['batch_shape'])} ({result['step_s']:.3f} s per step); a save every {result['save_every']} "
        f"steps, {result['measured_per_run']} measured per run; medians over {result['repeats']} turns of every "
        "measured save; window: the save's step and those until it committed; stall: the window minus as many "
        "of the run's median clean steps",
        ["mode", "stall per save s", "window steps", "loop blocked in the save call s"],
        [
            [
                f"{r['mode']} (control)" if r["mode"] == "no save" else r["mode"],
                f"{r['stall_s']:+.4f}",
                f"{r['window_steps']:g}",
                f"{r['save_call_s']:.4f}",
            ]  # fmt: skip
            for r in result["rows"]
        ],
    )
    print(f"  one copy of the whole state into preallocated host buffers (the floor): {floor:.4f} s")
    print(
        f"  asynchronous stall / floor: {result['async_over_floor']:.2f}; asynchronous stall / synchronous stall: "
        f"{result['async_over_sync']:.3f}  ({time.perf_counter() - started:.0f} s)"
    )
    if result["uncommitted"]:
        print(f"  WARNING: {result['uncommitted']} asynchronous save(s) not committed within their interval: "
              "their stall is a lower bound")  # fmt: skip
    bench.check("checkpoint stall, async / sync save", result["async_over_sync"], ASYNC_STALL_BUDGET,
                enforced=bench.enforce)  # fmt: skip
    bench.check("checkpoint stall, async save / one copy of the state", result["async_over_floor"],
                ASYNC_FLOOR_BUDGET, enforced=bench.enforce)  # fmt: skip
