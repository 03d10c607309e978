"""When a callback acts: at every n-th epoch (`due`), and a warning only the first time (`warn_once`).

Dependency-free, so callbacks and the inspection helpers they use share one definition.
"""

from __future__ import annotations

import warnings


def due(epoch: int, every_n_epochs: int) -> bool:
    """True at the end of every `every_n_epochs`-th epoch (epochs counted from 0)."""
    return (epoch + 1) % every_n_epochs == 0


def warn_once(owner: object, key: str, message: str) -> None:
    """`warnings.warn(message)` the first time `owner` reports `key`."""
    seen: set[str] = owner.__dict__.setdefault("_warned_keys", set())
    if key not in seen:
        seen.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def warned(owner: object, key: str) -> bool:
    """Whether `owner` already reported `key` with `warn_once` (to skip working out a message again)."""
    return key in owner.__dict__.get("_warned_keys", ())
