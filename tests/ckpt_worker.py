"""A training run for the subprocess tests (python or torchrun): save, stop, resume, be killed.

Writes the final weights to `--out` when training ends normally.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ckpt_common import Heartbeat, StepLRCallback, StopAtStep, loaders, make_trainer, save_weights  # noqa: E402

from callbacks_kit import Callback, ModelCheckpoint, PreemptionHandler  # noqa: E402


class KillAtStep(Callback):
    """SIGKILLs this process right after step `step` (after any checkpoint of that step)."""

    order = 500

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer) -> None:  # noqa: ANN001
        if trainer.state.optimizer_stepped and trainer.state.global_step == self.step and trainer.is_main_process:
            os.kill(os.getpid(), signal.SIGKILL)


def die_during_save(phase: str, nth: int) -> None:
    """SIGKILL this process the `nth` time a save reaches `phase`.

    "write:NAME": halfway through writing the file NAME; "rename:PREFIX" / "replace:PREFIX":
    right after an os.rename / os.replace whose source or target name starts with PREFIX.
    """
    import callbacks_kit.checkpoint_io as io

    kind, _, target = phase.partition(":")
    seen = [0]

    def hit() -> bool:
        seen[0] += 1
        return seen[0] == nth

    if kind == "write":
        real_write = io._write_file

        def write(path: Path, data: bytes) -> None:
            if path.name == target and hit():
                path.write_bytes(data[: len(data) // 2])
                os.kill(os.getpid(), signal.SIGKILL)
            real_write(path, data)

        io._write_file = write
        return
    real_move = getattr(os, kind)

    def move(src: str, dst: str) -> None:
        real_move(src, dst)
        if (Path(src).name.startswith(target) or Path(dst).name.startswith(target)) and hit():
            os.kill(os.getpid(), signal.SIGKILL)

    setattr(os, kind, move)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", required=True)
    parser.add_argument("--out")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--resume")
    parser.add_argument("--every-n-steps", type=int)
    parser.add_argument("--stop-at", type=int)
    parser.add_argument("--kill-at", type=int)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--accumulation", type=int, default=1)
    parser.add_argument("--preemption", action="store_true")
    parser.add_argument("--die-during-save", metavar="PHASE", help="see die_during_save; at the 3rd match")
    args = parser.parse_args()
    if args.die_during_save:
        die_during_save(args.die_during_save, nth=3)
    callbacks = [
        StepLRCallback(),
        ModelCheckpoint(args.dir, monitor="val/accuracy", mode="max", every_n_steps=args.every_n_steps),
        Heartbeat(args.sleep),
    ]
    if args.stop_at:
        callbacks.append(StopAtStep(args.stop_at))
    if args.kill_at:
        callbacks.append(KillAtStep(args.kill_at))
    if args.preemption:
        callbacks.append(PreemptionHandler(("SIGTERM", "SIGINT", "SIGUSR1")))
    trainer = make_trainer(callbacks, accumulation=args.accumulation, width=args.width)
    train_loader, val_loader = loaders()
    trainer.fit(train_loader, val_loader, epochs=args.epochs, resume_from=args.resume)
    if args.out and trainer.is_main_process and not trainer.state.should_stop:
        save_weights(trainer, args.out)
    print(f"finished at step {trainer.state.global_step}", flush=True)


if __name__ == "__main__":
    main()
