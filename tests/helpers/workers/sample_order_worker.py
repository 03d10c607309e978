"""Worker for test_resume_world_size: run by torchrun in two gloo processes, three fits in a row.

1. 2 x 16 samples from scratch, stopped after step 5; the checkpoints of steps 4 and 5 are kept.
2. A timed checkpoint (every_n_minutes) whose time is up on process 1 alone: both save, at a log step.
3. 2 x 24 resumed from a checkpoint of 1 x 32 (given), to the end; those of steps 2 and 6 are kept.

Each process writes the rows it recorded (sample ids per step) to `<out>/<fit>-rank<r>.jsonl`.
"""

from __future__ import annotations

import argparse
import json
import types
from pathlib import Path

from helpers.sample_ids import run, write_rows

from callbacks_kit import Callback, ModelCheckpoint, Trainer
from callbacks_kit.callbacks import model_checkpoint


class Clock:
    """A stand-in for the `time` module of model_checkpoint.py, whose clock process 1 moves on."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now


class TimeUpOnRankOne(Callback):
    """After step 1, two minutes pass on process 1's clock only."""

    order = 100  # before ModelCheckpoint (200)

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def on_train_batch_end(self, trainer: Trainer) -> None:
        if trainer.accelerator.process_index == 1 and trainer.state.global_step == 1:
            self.clock.now += 120


class SavedSteps(Callback):
    """The optimizer step of every save, as this process saw it."""

    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_save_checkpoint(self, trainer: Trainer) -> None:
        self.steps.append(trainer.state.global_step)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--from-single", required=True, help="a checkpoint of 1 process x 32 samples")
    args = parser.parse_args()
    out: Path = args.out

    trainer, rows = run(16, out / "a", stop_at=5, copy_to=out / "copies", copy_at=(4, 5))
    rank = trainer.accelerator.process_index
    write_rows(rows, out / f"a-rank{rank}.jsonl")

    clock, saved = Clock(), SavedSteps()
    model_checkpoint.time = types.SimpleNamespace(monotonic=clock.monotonic)  # type: ignore[assignment]
    timed = ModelCheckpoint(out / "timed", every_n_epochs=None, every_n_minutes=1, async_save=False)
    run(16, out / "timed", epochs=1, checkpoint=timed, extra=[TimeUpOnRankOne(clock), saved])
    (out / f"timed-rank{rank}.json").write_text(json.dumps(saved.steps))

    _, rows = run(24, out / "c", resume=args.from_single, copy_to=out / "copies", copy_at=(2, 6))
    write_rows(rows, out / f"c-rank{rank}.jsonl")


if __name__ == "__main__":
    main()
