"""What a valid `run.json` holds: each field's type and range, checked at once with one message for all.

`read_run_info` checks a file before anything uses it, and `write_run_info` a `RunInfo`
before it is written, so that `"classes": "abcdef"` or `"image_size": "32"` is refused
with the field named, never answered with single letters or a traceback from a transform.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from callbacks_kit.choices import SEGMENTATION_LOSSES, TASKS
from callbacks_kit.finetune.heads import HEADS

Check = Callable[[Any], bool]


def _integer(low: int) -> Check:
    return lambda value: isinstance(value, int) and not isinstance(value, bool) and value >= low


def _number(low: float, high: float) -> Check:
    """A finite number in [low, high)."""
    return lambda value: _is_number(value) and low <= value < high


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _class_names(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) >= 1
        and all(_text(name) for name in value)
        and len(set(value)) == len(value)
    )


def _channels(positive: bool) -> Check:
    return lambda value: (
        isinstance(value, list) and len(value) == 3 and all(_is_number(v) and (v > 0 or not positive) for v in value)
    )


# field -> (check, what it must be). Fields not listed are ignored (a newer writer's extras).
FIELDS: dict[str, tuple[Check, str]] = {
    "model": (_text, "a model name (a string such as 'resnet18')"),
    "classes": (_class_names, "a list of distinct class names (strings), one per output of the model"),
    "num_classes": (_integer(1), "a whole number, the length of classes"),
    "image_size": (_integer(1), "a whole number of pixels, at least 1"),
    "resize": (_integer(1), "a whole number of pixels, at least image_size"),
    "head": (lambda value: value in HEADS, f"one of {', '.join(map(repr, HEADS))}"),
    "hidden": (_integer(1), "a whole number of units, at least 1"),
    "dropout": (_number(0, 1), "a number in [0, 1)"),
    "mean": (_channels(False), "a list of 3 numbers (per RGB channel)"),
    "std": (_channels(True), "a list of 3 positive numbers (per RGB channel)"),
    "checkpoint_dir": (_text, "a folder name (a string)"),
    "package_version": (lambda value: isinstance(value, str), "a string"),
    "label_smoothing": (_number(0, 1), "a number in [0, 1)"),
    "monitor": (_text, "a metric name (a string such as 'val/accuracy')"),
    "monitor_mode": (lambda value: value in ("min", "max"), "'min' or 'max'"),
    "best_weights": (lambda value: value in ("trained", "ema"), "'trained' or 'ema'"),
    "task": (lambda value: value in TASKS, " or ".join(map(repr, TASKS))),
    "loss": (lambda value: value in SEGMENTATION_LOSSES, f"one of {', '.join(map(repr, SEGMENTATION_LOSSES))}"),
    "ignore_index": (lambda value: value is None or _integer(0)(value), "null or a whole number of at least 0"),
}
REQUIRED = ("model", "classes", "image_size", "resize")


def _shown(value: Any) -> str:
    kind = {str: "the string", list: "a list", dict: "an object", bool: "the boolean"}.get(type(value), "")
    text = repr(value)
    return f"{kind} {text if len(text) <= 60 else text[:57] + '...'}".strip()


def run_json_problems(data: Any) -> list[str]:
    """Every way `data` (a parsed `run.json`, or a `RunInfo` as a dict) breaks the schema; empty when none."""
    if not isinstance(data, dict):
        return [f"it holds {_shown(data)}, not a JSON object of fields"]
    problems = [f"{name} is missing" for name in REQUIRED if name not in data]
    for name, (check, wanted) in FIELDS.items():
        if name in data and not check(data[name]):
            problems.append(f"{name} must be {wanted}, got {_shown(data[name])}")
    if not problems:
        if "num_classes" in data and data["num_classes"] != len(data["classes"]):
            problems.append(f"num_classes is {data['num_classes']} but classes lists {len(data['classes'])} names")
        if data["resize"] < data["image_size"]:
            problems.append(
                f"resize ({data['resize']}) is below image_size ({data['image_size']}): the centre crop of image_size "
                "is cut from the resized image"
            )
    return problems
