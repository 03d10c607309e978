"""Time every callback of the main job, per event, against the epoch time.

Runs `callbacks-kit train` with the given options (default: the main job for 2 epochs)
and prints, per callback: seconds at fit start (one-off), seconds per epoch afterwards,
and that as a share of an epoch. Section 2 of scripts/benchmark.py, per event
(`benchmarks.callbacks.event_report`).

    python scripts/bench_inspection.py [train options...]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout without installing

from benchmarks.callbacks import event_report  # noqa: E402

if __name__ == "__main__":
    sys.exit(event_report(sys.argv[1:]))
