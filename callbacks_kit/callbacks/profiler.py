"""Profiler: torch.profiler over a window of optimizer steps; a Chrome/Perfetto trace and a top-operator table."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from accelerate.utils import broadcast_object_list
from torch.profiler import ProfilerActivity, profile, schedule

from callbacks_kit.callbacks.base import Callback, Order
from callbacks_kit.errors import TrainerError

if TYPE_CHECKING:
    from callbacks_kit.trainer import Trainer

TRACE_SUFFIX = ".pt.trace.json.gz"  # gzipped Chrome trace JSON; the ".pt.trace" part is PyTorch's own naming


class Profiler(Callback):
    """Profiles `active` optimizer steps with `torch.profiler` and writes what they spent their time on.

    The window starts after `wait` steps of this `fit` and `warmup` steps that run the
    profiler without recording (its first steps cost more than the rest), then records
    `active` steps. Each step is a `ProfilerStep#<N>` span in the trace, N the step's number
    as TensorBoard counts it (`global_step` after it): from the end of step N-1 (all its
    callbacks done) to the end of step N, the wait for its batch included; a window that
    crosses an epoch's end holds that validation in the step after it, and a run that stops
    inside the window ends its trace with what ran after its last step, as `ProfilerStep#<last + 1>`
    (a warning says so).

    Written when the window ends:

    - `<folder>/steps<a>-<b>.rank<r>.pt.trace.json.gz`, every process its own: a
      Chrome trace that https://ui.perfetto.dev and chrome://tracing open as they are;
    - on the main process, the text `profiler/cpu`: the `row_limit` operators with the most
      self CPU time, and `profiler/cuda` by self CUDA time when training on a GPU
      (TensorBoard's Text tab), with where the trace is.

    Outside the window nothing is recorded and nothing runs: the `torch.profiler.profile` is
    made when the window starts and closed when it ends; the steps before and after cost
    the loop an integer comparison (benchmark section 10).

    Args:
        wait: Optimizer steps of this `fit` before the window (the first steps allocate,
            autotune and warm caches).
        warmup: Steps with the profiler on, not recorded.
        active: Steps recorded.
        dirpath: Where the traces go; default the `profile` folder in the run's TensorBoard
            folder (the main process's `TensorBoardLogger`).
        row_limit: Operators in each table.
        record_shapes, profile_memory, with_stack: As `torch.profiler.profile` takes them;
            each makes the recorded steps slower and the trace bigger.
    """

    order = Order.PROFILE

    def __init__(
        self,
        wait: int = 1,
        warmup: int = 1,
        active: int = 3,
        dirpath: str | Path | None = None,
        row_limit: int = 20,
        record_shapes: bool = False,
        profile_memory: bool = False,
        with_stack: bool = False,
    ) -> None:
        checks = (("wait", wait, 0), ("warmup", warmup, 0), ("active", active, 1), ("row_limit", row_limit, 1))
        for name, value, least in checks:
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise TrainerError(f"Profiler({name}={value!r}): give a whole number of steps, at least {least}")
        self.wait, self.warmup, self.active, self.row_limit = wait, warmup, active, row_limit
        self.dirpath = None if dirpath is None else Path(dirpath)
        self.record_shapes, self.profile_memory, self.with_stack = record_shapes, profile_memory, with_stack
        self.trace_path: Path | None = None  # the trace this process wrote, once the window ended
        self.first = self.last = 0  # the window's first step (warm-up included) and last, as global steps
        self._profile: profile | None = None
        self._folder: Path | None = None
        self._ready = False  # torch.profiler has stopped recording: the trace can be written
        self._done = False
        self._cuda = False

    @property
    def running(self) -> bool:
        """True while a `torch.profiler.profile` exists: from the end of step `first - 1` to the end of `last`."""
        return self._profile is not None

    # ------------------------------------------------------------------------------ events
    def on_fit_start(self, trainer: Trainer) -> None:
        self._done, self._ready, self.trace_path = False, False, None
        self._folder = self._trace_folder(trainer)
        state = trainer.state
        self.first = state.global_step + self.wait + 1
        self.last = self.first + self.warmup + self.active - 1
        total = planned_steps(trainer)
        if total is not None and self.last > total:
            raise TrainerError(
                f"Profiler: the window ends at optimizer step {self.last} (wait {self.wait}, warmup {self.warmup}, "
                f"active {self.active} after step {state.global_step}), but this fit ends at step {total}: "
                "lower wait, warmup or active (callbacks-kit train --profile-steps), or train longer"
            )
        if self.first == state.global_step + 1:
            self._start(trainer)

    def on_train_batch_end(self, trainer: Trainer) -> None:
        state = trainer.state
        if not state.optimizer_stepped:
            return
        if self._profile is not None:
            self._profile.step()  # ends ProfilerStep#<global_step>
            if state.global_step >= self.last:
                self._finish(trainer, state.global_step)
        elif not self._done and state.global_step == self.first - 1:
            self._start(trainer)

    def on_fit_end(self, trainer: Trainer) -> None:
        if self._profile is not None:
            self._finish(trainer, trainer.state.global_step)

    def on_exception(self, trainer: Trainer) -> None:
        if self._profile is not None:
            try:
                self._finish(trainer, trainer.state.global_step)
            except Exception as exc:  # the run's own error is the one to see
                warnings.warn(f"Profiler: the trace of the failed run was not written ({exc})", stacklevel=2)

    def on_teardown(self, trainer: Trainer) -> None:
        self._close()

    # ------------------------------------------------------------------------------ pieces
    def _start(self, trainer: Trainer) -> None:
        """Make the profiler at the boundary before step `first`, its steps numbered as the trainer's."""
        self._cuda = trainer.device.type == "cuda"
        self._ready = False
        self._profile = profile(
            activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self._cuda else []),
            schedule=schedule(skip_first=self.first, wait=0, warmup=self.warmup, active=self.active, repeat=1),
            on_trace_ready=self._trace_ready,
            record_shapes=self.record_shapes,
            profile_memory=self.profile_memory,
            with_stack=self.with_stack,
        )
        # Steps before `first` are nothing to the schedule; numbering from first - 1 makes the
        # next step ProfilerStep#<first>, as TensorBoard numbers it.
        self._profile.step_num = self.first - 1
        self._profile.__enter__()
        self._profile.step()

    def _trace_ready(self, _: Any) -> None:
        self._ready = True

    def _finish(self, trainer: Trainer, step: int) -> None:
        """Stop at `step` (the window's last, or where the run ended) and write what was recorded."""
        profiler, self._profile, self._done = self._profile, None, True
        assert profiler is not None
        profiler.__exit__(None, None, None)  # ended inside the window: what was recorded is ready now
        recorded_from = self.first + self.warmup
        if not self._ready:
            warnings.warn(
                f"Profiler: training ended at step {step}, before the recorded steps {recorded_from}-{self.last}; "
                "no trace",
                RuntimeWarning,
                stacklevel=3,
            )
            return
        if step < self.last:
            warnings.warn(
                f"Profiler: training ended at step {step}, inside the window: the trace holds steps "
                f"{recorded_from}-{step} of {recorded_from}-{self.last}, and what ran after step {step} until the "
                f"end as ProfilerStep#{step + 1}",
                RuntimeWarning,
                stacklevel=3,
            )
        self._write(trainer, profiler, recorded_from, min(step, self.last))

    def _write(self, trainer: Trainer, profiler: profile, first: int, last: int) -> None:
        assert self._folder is not None
        rank = trainer.accelerator.process_index
        self._folder.mkdir(parents=True, exist_ok=True)
        path = _free_name(self._folder, f"steps{first}-{last}.rank{rank}")
        profiler.export_chrome_trace(str(path))
        self.trace_path = path
        writer = trainer.tb_writer
        if writer is None:
            return
        averages = profiler.key_averages()
        where = f"Steps {first} to {last}, rank {rank}: trace `{path}` (open it in https://ui.perfetto.dev)."
        tables = {"cpu": "self_cpu_time_total"}
        if self._cuda:
            sample = next(iter(averages), None)
            device_key = "self_device_time_total" if hasattr(sample, "self_device_time_total") else ""
            tables["cuda"] = device_key or "self_cuda_time_total"  # its name before torch 2.4
        for name, key in tables.items():
            table = averages.table(sort_by=key, row_limit=self.row_limit)
            writer.add_text(f"profiler/{name}", where + "\n\n    " + table.replace("\n", "\n    "), last)
        trainer.print(f"profile of steps {first}-{last} written to {path}")

    def _close(self) -> None:
        if self._profile is not None:
            self._profile.__exit__(None, None, None)
            self._profile, self._done = None, True

    def _trace_folder(self, trainer: Trainer) -> Path:
        """`dirpath`, else `profile/` in the main process's TensorBoard folder, known to every process."""
        folder: list[Any] = [self.dirpath]
        if folder[0] is None and trainer.tb_writer is not None:
            folder[0] = Path(trainer.tb_writer.log_dir) / "profile"
        if trainer.accelerator.num_processes > 1 and self.dirpath is None:
            broadcast_object_list(folder, from_process=0)
        if folder[0] is None:
            raise TrainerError(
                "Profiler: no folder for the trace: pass Profiler(dirpath=...), or train with a TensorBoardLogger "
                "(the trace then goes into <its log_dir>/profile)"
            )
        return Path(folder[0])


def planned_steps(trainer: Trainer) -> int | None:
    """The global step at which this `fit` ends if nothing stops it early; None for a loader without a length."""
    state = trainer.state
    if state.batches_per_epoch is None:
        return None
    per_epoch = math.ceil(state.batches_per_epoch / trainer.accelerator.gradient_accumulation_steps)
    return state.max_epochs * per_epoch


def _free_name(folder: Path, stem: str) -> Path:
    """`folder/<stem>.pt.trace.json.gz`, or with `-2`, `-3`... when a run before wrote that one."""
    path, n = folder / f"{stem}{TRACE_SUFFIX}", 1
    while path.exists():
        n += 1
        path = folder / f"{stem}-{n}{TRACE_SUFFIX}"
    return path
