"""The repository's folders, as the tests and their subprocesses need them."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"
EXAMPLES = REPO / "examples"
WORKERS = TESTS / "helpers" / "workers"
# For a worker run by file path: imports callbacks_kit from this checkout, and `helpers.*`.
WORKER_PYTHONPATH = os.pathsep.join([str(REPO), str(TESTS)])
