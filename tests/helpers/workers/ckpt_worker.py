"""A training run for the subprocess tests (python or torchrun): save, stop, resume, be killed.

Writes the final weights to `--out` when training ends normally.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
from pathlib import Path

from helpers.checkpoints import (
    Heartbeat,
    ScriptedScore,
    StepLRCallback,
    StopAtStep,
    loaders,
    make_trainer,
    save_weights,
)

from callbacks_kit import Callback, ModelCheckpoint, PreemptionHandler


class KillAtStep(Callback):
    """SIGKILLs this process right after step `step` (after any checkpoint of that step)."""

    order = 500

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer) -> None:  # noqa: ANN001
        if trainer.state.optimizer_stepped and trainer.state.global_step == self.step and trainer.is_main_process:
            os.kill(os.getpid(), signal.SIGKILL)


def fd_name(fd: int) -> str:
    """The name of the file or folder open as `fd`."""
    try:
        return Path(os.readlink(f"/proc/self/fd/{fd}")).name
    except FileNotFoundError:  # no /proc: macOS
        import fcntl

        return Path(fcntl.fcntl(fd, fcntl.F_GETPATH, bytes(1024)).split(b"\0")[0].decode()).name


def die_during_save(phase: str, nth: int) -> None:
    """SIGKILL this process the `nth` time a save reaches `phase`.

    "write:NAME": halfway through writing the file NAME (when it is fsynced, it is cut to
    half its size first); "rename:PREFIX" / "replace:PREFIX": right after an os.rename /
    os.replace whose source or target name starts with PREFIX. Only `os` is patched: the
    package's own functions stay as they are.
    """
    kind, _, target = phase.partition(":")
    seen = [0]

    def hit() -> bool:
        seen[0] += 1
        return seen[0] == nth

    if kind == "write":
        real_fsync = os.fsync

        def fsync(fd: int) -> None:
            if fd_name(fd) == target and hit():
                os.ftruncate(fd, os.fstat(fd).st_size // 2)
                os.kill(os.getpid(), signal.SIGKILL)
            real_fsync(fd)

        os.fsync = fsync
        return
    real_move = getattr(os, kind)

    def move(src: str, dst: str) -> None:
        real_move(src, dst)
        if (Path(src).name.startswith(target) or Path(dst).name.startswith(target)) and hit():
            os.kill(os.getpid(), signal.SIGKILL)

    setattr(os, kind, move)


def no_space_for(folder: str, rank: int) -> None:
    """On process `rank`, every write into a checkpoint folder whose name contains `folder` fails: a full disk."""
    if int(os.environ.get("RANK", "0")) != rank:
        return
    from callbacks_kit.checkpoint import store

    real_write = store._write_file

    def full(path: Path, data: object) -> None:
        if folder in path.parent.name:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, data)

    store._write_file = full


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
    parser.add_argument("--die-during-save", metavar="PHASE", help="see die_during_save; at the --die-at-match'th")
    parser.add_argument("--die-at-match", type=int, default=3)
    parser.add_argument("--no-space-for", metavar="FOLDER", help="see no_space_for (with --no-space-rank)")
    parser.add_argument("--no-space-rank", type=int, default=0)
    parser.add_argument("--scores", help="val/score per epoch, comma-separated: monitored instead of val/accuracy")
    args = parser.parse_args()
    if args.die_during_save:
        die_during_save(args.die_during_save, nth=args.die_at_match)
    if args.no_space_for:
        no_space_for(args.no_space_for, args.no_space_rank)
    monitor = "val/score" if args.scores else "val/accuracy"
    callbacks = [
        StepLRCallback(),
        ModelCheckpoint(args.dir, monitor=monitor, mode="max", every_n_steps=args.every_n_steps),
        Heartbeat(args.sleep),
    ]
    if args.scores:
        callbacks.append(ScriptedScore([float(v) for v in args.scores.split(",")]))
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
