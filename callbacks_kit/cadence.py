"""When a callback acts: at every n-th epoch (`due`, `check_cadence`), and a warning only the first time (`warn_once`).

Dependency-free, so callbacks and the inspection helpers they use share one definition.
"""

from __future__ import annotations

import math
import warnings

from callbacks_kit.errors import TrainerError


def due(epoch: int, every_n_epochs: int) -> bool:
    """True at the end of every `every_n_epochs`-th epoch (epochs counted from 0)."""
    return (epoch + 1) % every_n_epochs == 0


def check_cadence(
    owner: str, every_n_epochs: object = None, every_n_steps: object = None, every_n_minutes: object = None
) -> None:
    """Refuse a cadence that cannot work: `every_n_epochs`/`every_n_steps` None or an int >= 1, minutes None or > 0."""
    for name, value in (("every_n_epochs", every_n_epochs), ("every_n_steps", every_n_steps)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise TrainerError(f"{owner}: {name} must be None or an int >= 1, got {value!r}")
    minutes = every_n_minutes
    if minutes is not None and (
        isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or not 0 < minutes < math.inf
    ):
        raise TrainerError(f"{owner}: every_n_minutes must be None or a number > 0, got {minutes!r}")


def warn_once(owner: object, key: str, message: str) -> None:
    """`warnings.warn(message)` the first time `owner` reports `key`."""
    seen: set[str] = owner.__dict__.setdefault("_warned_keys", set())
    if key not in seen:
        seen.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def warned(owner: object, key: str) -> bool:
    """Whether `owner` already reported `key` with `warn_once` (to skip working out a message again)."""
    return key in owner.__dict__.get("_warned_keys", ())
