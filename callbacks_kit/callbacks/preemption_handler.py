"""PreemptionHandler: on SIGTERM or SIGINT, finish the step, save, and exit with a message."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from types import FrameType
from typing import TYPE_CHECKING, Any

import torch

from callbacks_kit.callbacks.base import Callback, Order
from callbacks_kit.callbacks.model_checkpoint import ModelCheckpoint
from callbacks_kit.errors import TrainerError

if TYPE_CHECKING:
    from callbacks_kit.trainer import Trainer


class PreemptionHandler(Callback):
    """Turns a termination signal into a clean stop with a checkpoint that resumes exactly.

    On the first signal, training goes on to the end of the current optimizer step (all
    gradient-accumulation batches of it), every process agrees to stop there (the trainer's
    stop flag is agreed at every batch), the `ModelCheckpoint` saves that position
    when `fit` ends (waiting for an asynchronous save in flight to be committed), and this
    callback prints where it stopped and exits the process with
    status 128 + signal number (143 for SIGTERM, 130 for SIGINT). A second SIGINT aborts at
    once, without saving. A signal during validation takes effect after it, at the epoch end.

    The signal handlers are installed at fit start (main thread only) and the previous ones
    put back when `fit` ends. DataLoader workers forked during `fit` inherit them, and a
    Ctrl-C in a terminal signals them too: they ignore it (the process that installed the
    handlers stops the run), so the message is printed once and the workers keep serving
    the batches of the step being finished. Under `torchrun`, a signal sent to the launcher reaches every
    worker, and the launcher kills them 30 s later: the step plus the save must fit in that.

    Args:
        signals: Signal names to handle; add "SIGUSR1" for schedulers that send it before the end.
        exit_after_save: Exit the process after saving (False: `fit` returns, `signal_received` tells).
        checkpoint: The `ModelCheckpoint` to save with; None: the one in the trainer's callbacks
            (found at fit start; an error when there is none or more than one).
    """

    order = Order.EXIT

    def __init__(
        self,
        signals: tuple[str, ...] = ("SIGTERM", "SIGINT"),
        exit_after_save: bool = True,
        checkpoint: ModelCheckpoint | None = None,
    ) -> None:
        unknown = [name for name in signals if not isinstance(getattr(signal, str(name), None), signal.Signals)]
        if unknown:
            raise TrainerError(f"PreemptionHandler: unknown signals {unknown}; use names such as 'SIGTERM', 'SIGUSR1'")
        self.signals = tuple(signal.Signals[name] for name in signals)
        self.exit_after_save = exit_after_save
        self.checkpoint = checkpoint
        self._saver: ModelCheckpoint | None = checkpoint
        self._is_main = True
        self.signal_received: str | None = None
        self._signum = 0
        self._received_at = 0.0
        self._previous: dict[signal.Signals, Any] = {}
        self._pid = os.getpid()  # the process whose handlers these are (forked workers inherit them)

    def on_fit_start(self, trainer: Trainer) -> None:
        self._saver = self.checkpoint or self._find_checkpoint(trainer)
        self.signal_received, self._signum, self._is_main = None, 0, trainer.is_main_process
        if threading.current_thread() is not threading.main_thread():
            trainer.print("PreemptionHandler: not in the main thread; signals cannot be handled here")
            return
        self._pid = os.getpid()
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._pid:
            return  # a forked DataLoader worker: the training process handles the stop
        if self._signum:
            if signum == signal.SIGINT:
                self._restore()
                raise KeyboardInterrupt("second Ctrl-C: stopped without saving")
            return
        self._signum, self._received_at = signum, time.monotonic()
        self.signal_received = signal.Signals(signum).name
        if self._is_main:  # os.write: a print could re-enter a stream the interrupted code was writing
            again = " (Ctrl-C again to abort without saving)" if signum == signal.SIGINT else ""
            message = f"\n{self.signal_received} received: finishing the current step, then saving a checkpoint"
            os.write(sys.stderr.fileno(), f"{message}{again}\n".encode())

    def on_train_batch_end(self, trainer: Trainer) -> None:
        if self._signum and trainer.state.optimizer_stepped:
            trainer.state.should_stop = True

    def on_epoch_end(self, trainer: Trainer) -> None:
        if self._signum:
            trainer.state.should_stop = True

    def on_teardown(self, trainer: Trainer) -> None:
        self._restore()

    @staticmethod
    def _find_checkpoint(trainer: Trainer) -> ModelCheckpoint:
        found = trainer.callbacks.find(ModelCheckpoint)
        if len(found) != 1:
            raise TrainerError(
                f"PreemptionHandler saves through a ModelCheckpoint and the trainer has {len(found)}; "
                "add one, or pass the one to use: PreemptionHandler(checkpoint=...)"
            )
        return found[0]

    def on_fit_end(self, trainer: Trainer) -> None:
        try:
            signum = self._agreed_signal(trainer)
            if signum:
                self._report(trainer, signal.Signals(signum).name)
        finally:
            self._restore()
        if signum and self.exit_after_save and trainer.state.epoch < trainer.state.max_epochs:
            raise SystemExit(128 + signum)

    def _report(self, trainer: Trainer, name: str) -> None:
        """Save the position if it is not yet (every process), and say where training stopped."""
        state, checkpoint = trainer.state, self._saver
        assert checkpoint is not None
        self.signal_received = name
        if state.epoch >= state.max_epochs:
            trainer.print(f"{name} received after the last epoch: training is complete")
            return
        folder, position = checkpoint.save_now(trainer), checkpoint.position
        if folder is None or position is None:
            trainer.print(f"stopped by {name} before the first optimizer step: nothing new to save")
            return
        where = f"after epoch {position.epoch}" if not position.batch else (
            f"in epoch {position.epoch + 1} after batch {position.batch}"
        )  # fmt: skip
        took = f" {time.monotonic() - self._received_at:.1f} s after the signal" if self._received_at else ""
        trainer.print(
            f"stopped by {name} {where} (optimizer step {state.global_step}); checkpoint saved{took} in {folder}. "
            "Resume with resume_from='last' (callbacks-kit train ... --resume last)"
        )

    def _agreed_signal(self, trainer: Trainer) -> int:
        """The signal any process received (every process calls this at fit end)."""
        if trainer.accelerator.num_processes == 1:
            return self._signum
        flag = torch.tensor([self._signum], device=trainer.device)
        return int(trainer.accelerator.gather(flag).max())

    def _restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()
