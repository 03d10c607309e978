"""Every error the package raises on purpose, under one base: `except CallbacksKitError` catches them all.

Each message names the problem and the fix. Each class says what went wrong, not where:

    CallbacksKitError (ValueError)
        TrainerError          bad input to the trainer or a callback
            CallbackError     (also TypeError) something that is not a usable callback
        NonFiniteError        training diverged
        CheckpointError       a checkpoint or a run's files cannot be written or read
            FolderInUseError  another live writer holds the folder
            StateFormatError  a state value that cannot be saved
        ScheduleError, FinetuneError, LayerNotFoundError, DataError, LossInputError,
        AugmentationError, DeployError, CLIError, PeerProcessError

The base is a `ValueError`, Python's usual error for a value that cannot be used: every one
of these is raised for one (an option, a batch, a metric, a file's contents, a non-finite
number), and `except ValueError` catches them. This module imports nothing of the package,
so any module may import it.
"""

from __future__ import annotations


class CallbacksKitError(ValueError):
    """Base of the package's errors: bad input, a run that cannot go on, a checkpoint that cannot be used."""


class TrainerError(CallbacksKitError):
    """Bad input: an option, model, optimizer, loader, batch or metric the trainer or a callback cannot use.

    Found before training (options when a callback is built, the rest when `fit` starts) or
    as soon as it shows: the first step, the first validation (a monitored metric that is
    not logged).
    """


class CallbackError(TrainerError, TypeError):
    """A callback the trainer cannot use: not a `Callback` instance, a misspelt event, a clashing `state_key`.

    Also a `TypeError`, Python's usual error for an argument that is not the kind of object it
    should be, so `except TypeError` catches it too.
    """


class NonFiniteError(CallbacksKitError):
    """Training met a NaN or an infinity and was stopped before the weights took it in (or the save of them)."""


class CheckpointError(CallbacksKitError):
    """A checkpoint, or a run's files (`run.json`, its folders), cannot be written or read."""


class FolderInUseError(CheckpointError):
    """A run or checkpoint folder that another live writer (process or `ModelCheckpoint`) holds."""


class StateFormatError(CheckpointError):
    """A value in a state dict is neither JSON-able nor a tensor, so it cannot be checkpointed."""


class ScheduleError(CallbacksKitError):
    """An LR schedule that cannot work, found before training (or at the first validation)."""


class FinetuneError(CallbacksKitError):
    """A freeze, param-group, head or weight-loading request that does not fit the model."""


class LayerNotFoundError(CallbacksKitError):
    """A layer name that is not in the model; the message lists the closest real names."""


class DataError(CallbacksKitError):
    """A dataset folder or data option that cannot be used."""


class LossInputError(CallbacksKitError):
    """Inputs of a loss function whose shapes, dtypes or values do not fit it."""


class AugmentationError(CallbacksKitError):
    """A batch transform (MixUp/CutMix) or augmentation that does not fit its options, the data or the model."""


class DeployError(CallbacksKitError):
    """A trained run that cannot be used as asked: an export missing its package or not matching, an unknown output."""


class CLIError(CallbacksKitError):
    """A command-line option that cannot be used; printed as one line, exit status 2."""


class PeerProcessError(CallbacksKitError):
    """Another process of a multi-process launch failed, and this one stopped at a collective waiting for it.

    The cause is that other process's own error, printed above this one (or in its log).
    """


# What gloo, NCCL and c10d say when the other end of a collective went away or never came.
_PEER_SIGNS = (
    "connection closed by peer",
    "connection reset by peer",
    "broken pipe",
    "timed out",
    "timeout",
    "communicator was aborted",
    "remote process exited",
)


def is_peer_failure(exc: BaseException) -> bool:
    """True when `exc` is how a collective fails because another process of the launch died or hung."""
    if {cls.__name__ for cls in type(exc).__mro__} & {"DistBackendError", "DistNetworkError", "DistStoreError"}:
        return True
    text = str(exc).lower()
    backend = any(word in text for word in ("gloo", "nccl", "c10d", "processgroup"))
    return isinstance(exc, RuntimeError) and backend and any(sign in text for sign in _PEER_SIGNS)


def peer_failure_message(exc: BaseException) -> str:
    """One line for a peer's failure: the other process's error is the one to read, not this one."""
    lines = str(exc).strip().splitlines()
    return (
        "another process of this launch failed, and this one stopped waiting for it at a collective "
        f"({type(exc).__name__}: {lines[0] if lines else 'no message'}). Its own error, printed above or in its "
        "log, says what went wrong; fix that and launch again"
    )


__all__ = [
    "AugmentationError",
    "CLIError",
    "CallbackError",
    "CallbacksKitError",
    "CheckpointError",
    "DataError",
    "DeployError",
    "FinetuneError",
    "FolderInUseError",
    "LayerNotFoundError",
    "LossInputError",
    "NonFiniteError",
    "PeerProcessError",
    "ScheduleError",
    "StateFormatError",
    "TrainerError",
    "is_peer_failure",
    "peer_failure_message",
]
