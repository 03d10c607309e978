"""The performance benchmark of callbacks_kit: prints tables, writes JSON, enforces the budgets.

    python scripts/benchmark.py [--quick] [--json results.json] [--repeats N] [--threads N]

The sections, budgets and method are in the `benchmarks` package at the repository root
(its docstring lists them; docs/performance.md shows a full run). Exit status 1 when a
budget is missed.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout without installing

from benchmarks.suite import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
