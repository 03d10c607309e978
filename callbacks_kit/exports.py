"""Lazy re-exports for a package's `__init__`: its public names, each imported from its module on first use.

A package whose modules sit in different layers (`callbacks.base` under the callbacks,
`data.normalization` under the image-file readers) must not import all of them when any one
is imported: Python runs the package's `__init__` first. PEP 562's module `__getattr__` lets
`from package import Name` keep working while the `__init__` imports nothing.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any


def lazy_exports(
    package: str, homes: Mapping[str, str], public: Iterable[str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The `__getattr__` and `__dir__` of `package`, given each public name's module (relative to it).

    A name is imported on first use and kept in the package's namespace, so the next use is
    an ordinary attribute look-up.
    """
    names = sorted(set(public) | set(homes))

    def __getattr__(name: str) -> Any:  # noqa: N807 (PEP 562's name)
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{home}"), name)
        vars(sys.modules[package])[name] = value
        return value

    def __dir__() -> list[str]:  # noqa: N807
        return sorted({*vars(sys.modules[package]), *names})

    return __getattr__, __dir__
