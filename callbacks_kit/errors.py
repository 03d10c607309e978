"""Every error the package raises on purpose, under one base: `except CallbacksKitError` catches them all.

Each message names the problem and the fix. The base derives from `ValueError`, as every
one of these classes did before they shared a base, so existing `except ValueError` code
keeps working. This module imports nothing of the package, so any module may import it.
"""

from __future__ import annotations


class CallbacksKitError(ValueError):
    """Base of the package's errors: bad input, a run that cannot go on, a checkpoint that cannot be used."""


class TrainerError(CallbacksKitError):
    """Bad input found before (or at the very first step of) training."""


class CallbackError(TrainerError, TypeError):
    """A callback the trainer cannot use: not a `Callback` instance, a misspelt event, a clashing `state_key`.

    Also a `TypeError`, as these were before the errors shared a base.
    """


class NonFiniteError(TrainerError):
    """Training met a NaN or an infinity and was stopped before the weights took it in."""


class CheckpointError(TrainerError):
    """A checkpoint cannot be written or read; the message names the problem and the fix."""


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
    """A trained run that cannot be used as asked: an export that is missing its package or does not match."""


class CLIError(CallbacksKitError):
    """A command-line option that cannot be used; printed as one line, exit status 2."""


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
    "ScheduleError",
    "StateFormatError",
    "TrainerError",
]
