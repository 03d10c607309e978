"""The `Callback` base class and the ordered list that dispatches events to callbacks."""

from __future__ import annotations

import difflib
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from callbacks_kit.errors import CallbackError

if TYPE_CHECKING:
    from torch import nn

    from callbacks_kit.trainer import Trainer

C = TypeVar("C", bound="Callback")

EVENTS: tuple[str, ...] = (
    "on_fit_start",
    "on_epoch_start",
    "on_train_batch_start",
    "on_before_forward",
    "on_after_backward",
    "on_train_batch_end",
    "on_validation_start",
    "on_validation_batch_end",
    "on_validation_end",
    "on_epoch_end",
    "on_fit_end",
    "on_exception",
    "on_save_checkpoint",
    "on_teardown",
)


class Order:
    """Named values for `Callback.order`: callbacks run in ascending order at every event.

    The phases say why a callback needs its place; a custom callback picks the phase whose
    results it reads, e.g. `order = Order.INSPECT` to see the writer and this step's LR.
    """

    FREEZE = -110  # FreezeUnfreeze: what is trainable is set before anyone looks at the model or the LRs
    WRITER = -100  # TensorBoardLogger: creates the SummaryWriter the other loggers write through
    GUARD = -10  # TerminateOnNaN: checks gradients before callbacks read them in on_after_backward
    AVERAGE = -5  # EMA: averages after the NaN guard, validates val_ema before schedules, stops and saves read it
    SCHEDULE = 0  # LearningRateScheduler: sets the LR before loggers read it
    DEFAULT = 50  # a Callback that does not say
    PROGRESS = 90  # ProgressBar: shows what the earlier callbacks updated
    INSPECT = 110  # histograms, kernels, feature maps, Grad-CAM, confusion matrix
    STOP = 150  # EarlyStopping: decides to stop before the checkpoint records it
    SAVE = 200  # ModelCheckpoint: saves what every earlier callback updated
    EXIT = 1000  # PreemptionHandler: its on_fit_end may exit the process, after everyone else
    PROFILE = 2000  # Profiler: a profiled step ends after every other callback's work of that step


class Callback:
    """Base class: override the `on_*` events you need; all of them default to no-ops.

    Every event receives the trainer and nothing else; read what you need from
    `trainer.state`, `trainer.model`, `trainer.optimizer` and `trainer.accelerator`.

    Attributes:
        order: Callbacks run in ascending `order` (ties keep the order given); default
            `Order.DEFAULT` (50). `Order` names the phases the built-in callbacks use.
    """

    order: int = Order.DEFAULT

    @property
    def state_key(self) -> str:
        """Key under which `state_dict()` is saved in checkpoints; unique per callback."""
        return type(self).__qualname__

    def saved_state_key(self, saved: Collection[str]) -> str | None:
        """Which of a checkpoint's callback keys holds this callback's state: `state_key`, or None.

        A callback whose key names settings a resume may change (a save cadence) can also
        recognise the key those settings gave it.
        """
        return self.state_key if self.state_key in saved else None

    def state_dict(self) -> dict[str, Any]:
        """State that must survive a resume (best scores, counters...). JSON-serialisable."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict()` returned."""

    @property
    def checkpoint_dir(self) -> Path | None:
        """The folder this callback saves checkpoints into, where `fit(resume_from="last")` looks; None here.

        `ModelCheckpoint` returns its `dirpath`; a callback of your own that writes checkpoints
        in its format may too.
        """
        return None

    def validated_models(self) -> dict[str, nn.Module | None]:
        """Models this callback keeps besides the trained one, by the tag prefix of their metrics.

        Default: none. `EMA` returns `{"val_ema": <its averaged network>}` (None until its
        `on_fit_start` builds it): the metrics `val_ema/*` measure those weights, not the
        trained ones. Answered from construction on, so any event may read it, also before
        this callback's own `on_fit_start`. Other callbacks read it instead of looking for a
        class: `TensorBoardLogger` charts and lists `<prefix>/*` next to `val/*`; a
        `ModelCheckpoint` monitoring `<prefix>/...` checks the metric after that validation
        and exports that module's weights as `best.safetensors`.
        """
        return {}

    def on_fit_start(self, trainer: Trainer) -> None:
        """Once, after the model, optimizer and loaders are prepared, before the first epoch."""

    def on_epoch_start(self, trainer: Trainer) -> None:
        """At the start of each training epoch."""

    def on_train_batch_start(self, trainer: Trainer) -> None:
        """Before each training batch is unpacked."""

    def on_before_forward(self, trainer: Trainer) -> None:
        """The batch is unpacked and on the device: `trainer.last_inputs`/`last_targets` hold it.

        A callback may replace either (MixUp does; targets may become class probabilities);
        the forward and everything after it see the replacement.
        """

    def on_after_backward(self, trainer: Trainer) -> None:
        """Gradients are complete (all accumulated, all reduced) and unscaled, before the
        optimizer step. Fires only on batches where the optimizer will step.
        """

    def on_train_batch_end(self, trainer: Trainer) -> None:
        """After each training batch (and the optimizer step, when there was one)."""

    def on_validation_start(self, trainer: Trainer) -> None:
        """Before the validation loop (also for `trainer.evaluate`); `state.validation_prefix` names it."""

    def on_validation_batch_end(self, trainer: Trainer) -> None:
        """After each validation batch; `trainer.last_outputs`/`last_targets` hold it."""

    def on_validation_end(self, trainer: Trainer) -> None:
        """After validation; `trainer.state.metrics` holds `val/*`."""

    def on_epoch_end(self, trainer: Trainer) -> None:
        """At the end of each epoch, after validation."""

    def on_fit_end(self, trainer: Trainer) -> None:
        """Once, when `fit` finishes normally or stops early."""

    def on_exception(self, trainer: Trainer) -> None:
        """When `fit` is leaving on an exception (`trainer.exception` holds it).

        Not after `on_fit_end` has started: an exit raised there (PreemptionHandler's) ends a
        run that has already finished.
        """

    def on_save_checkpoint(self, trainer: Trainer) -> None:
        """Fired by `ModelCheckpoint` on every process right before it collects the state to save.

        Raise here to refuse the save (`TerminateOnNaN` does when a step went non-finite);
        the earlier checkpoints stay as they were.
        """

    def on_teardown(self, trainer: Trainer) -> None:
        """Always the last event of `fit`, after `on_fit_end` or `on_exception`, even when those raised.

        Release what the callback holds: writers, hooks, signal handlers, progress bars.
        """


class CallbackList:
    """Callbacks sorted by `order`, with their event names checked up front."""

    def __init__(self, callbacks: Iterable[Callback] = ()) -> None:
        self._callbacks: list[Callback] = []
        for callback in callbacks:
            self.append(callback)

    def append(self, callback: Callback) -> None:
        """Add a callback, keeping the list sorted by `order`."""
        if isinstance(callback, type) and issubclass(callback, Callback):
            raise CallbackError(
                f"{callback.__name__} is a Callback class, not a callback; pass an instance: {callback.__name__}(...)"
            )
        if not isinstance(callback, Callback):
            raise CallbackError(
                f"{callback!r} is not a Callback; subclass callbacks_kit.Callback and override its on_* methods"
            )
        _check_event_names(callback)
        keys = {c.state_key for c in self._callbacks}
        if callback.state_key in keys and is_stateful(callback):
            raise CallbackError(
                f"two stateful callbacks share the state_key {callback.state_key!r}; "
                "override `state_key` so that their checkpointed state does not collide"
            )
        self._callbacks.append(callback)
        self._callbacks.sort(key=lambda c: c.order)

    def fire(self, event: str, trainer: Trainer) -> None:
        """Call `event` on every callback in order."""
        for callback in self._callbacks:
            getattr(callback, event)(trainer)

    def fire_all(self, event: str, trainer: Trainer) -> None:
        """Call `event` on every callback even if some raise; then raise the first error."""
        first: BaseException | None = None
        for callback in self._callbacks:
            try:
                getattr(callback, event)(trainer)
            except BaseException as exc:  # every callback must get to release its resources
                first = first or exc
        if first is not None:
            raise first

    def find(self, kind: type[C]) -> list[C]:
        """Every callback that is an instance of `kind`: the documented way for one callback to find another."""
        return [c for c in self._callbacks if isinstance(c, kind)]

    def checkpoint_dir(self) -> Path | None:
        """The first callback's `checkpoint_dir` that is not None: the folder `resume_from="last"` means."""
        return next((c.checkpoint_dir for c in self._callbacks if c.checkpoint_dir is not None), None)

    def stateful(self) -> list[Callback]:
        """The callbacks whose `state_dict()` goes into checkpoints (those that override it)."""
        return [c for c in self._callbacks if is_stateful(c)]

    def __iter__(self) -> Iterator[Callback]:
        return iter(self._callbacks)

    def __len__(self) -> int:
        return len(self._callbacks)


def is_stateful(callback: Callback) -> bool:
    """True when the callback overrides `state_dict` (its state goes into checkpoints)."""
    return type(callback).state_dict is not Callback.state_dict


def _check_event_names(callback: Callback) -> None:
    """Reject `on_*` methods that are not events (a typo would silently never run)."""
    for name in dir(type(callback)):
        if name.startswith("on_") and name not in EVENTS and callable(getattr(callback, name)):
            close = difflib.get_close_matches(name, EVENTS, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"events are: {', '.join(EVENTS)}"
            raise CallbackError(f"{type(callback).__name__}.{name} is not a callback event; {hint}")
