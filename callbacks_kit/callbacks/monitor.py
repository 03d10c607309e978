"""A monitored metric: read it from `trainer.state.metrics` and compare scores by a mode.

The one place that says what "min" and "max" mean: `ModelCheckpoint`, `EarlyStopping` and
`TensorBoardLogger`'s best-so-far series all compare through it.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Hashable, Mapping
from typing import TYPE_CHECKING, TypeVar

from callbacks_kit.errors import TrainerError

if TYPE_CHECKING:
    from callbacks_kit.trainer import Trainer

K = TypeVar("K", bound=Hashable)

MODES = ("min", "max")


def check_mode(mode: str, owner: str) -> str:
    """`mode` itself when it is "min" or "max".

    Raises:
        TrainerError: any other mode, naming `owner` (the callback that was given it).
    """
    if mode not in MODES:
        raise TrainerError(f"{owner}: mode={mode!r}; use 'min' (losses) or 'max' (accuracy)")
    return mode


def is_better(score: float, reference: float | None, mode: str, min_delta: float = 0.0) -> bool:
    """True when `score` improves on `reference` by more than `min_delta` (None: anything but NaN does).

    NaN is never better than anything, so a diverged epoch is never kept as the best.
    """
    if math.isnan(score):
        return False
    if reference is None or math.isnan(reference):
        return True
    if mode == "min":
        return score < reference - min_delta
    return score > reference + min_delta


class Monitor:
    """The metric `key`, where "min" or "max" (by more than `min_delta`) is better.

    NaN is never better than anything, so a diverged epoch is never kept as the best.
    """

    def __init__(self, key: str, mode: str, min_delta: float = 0.0, owner: str = "callback") -> None:
        if not isinstance(key, str) or not key:
            raise TrainerError(f"{owner}: monitor must be a metric name such as 'val/loss', got {key!r}")
        check_mode(mode, owner)
        if not isinstance(min_delta, (int, float)) or min_delta < 0:
            raise TrainerError(f"{owner}: min_delta must be a number >= 0, got {min_delta!r}")
        self.key, self.mode, self.min_delta, self.owner = key, mode, float(min_delta), owner

    @property
    def prefix(self) -> str:
        """The tag prefix of `key`: the validation it comes from ("val" for "val/loss", "val_ema"...)."""
        return self.key.split("/", 1)[0]

    def read(self, trainer: Trainer) -> float:
        """The metric's latest value.

        Raises:
            TrainerError: the metric is not logged; the message lists the keys that are.
        """
        metrics = trainer.state.metrics
        if self.key not in metrics:
            keys = sorted(k for k in metrics if not k.startswith("perf/"))
            close = difflib.get_close_matches(self.key, keys, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise TrainerError(
                f"{self.owner} monitors {self.key!r}, which is not among the metrics: {', '.join(keys) or 'none'}."
                f"{hint} Validation metrics need a val_loader and `metrics={{name: fn}}` on the Trainer."
            )
        return float(metrics[self.key])

    def is_better(self, score: float, reference: float | None) -> bool:
        """True when `score` improves on `reference` (None: anything finite does)."""
        return is_better(score, reference, self.mode, self.min_delta)

    def best_of(self, scores: Mapping[K, float]) -> K:
        """The key of the best of `scores` (of equal ones, the first)."""
        return (min if self.mode == "min" else max)(scores, key=scores.__getitem__)

    def worst_of(self, scores: Mapping[K, float]) -> K:
        """The key of the worst of `scores` (of equal ones, the first)."""
        return (max if self.mode == "min" else min)(scores, key=scores.__getitem__)
