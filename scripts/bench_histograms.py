"""Device histograms (torch.histc + add_histogram_raw) against SummaryWriter.add_histogram.

Times both over every parameter of a ResNet-18, writing to a temporary event file, and
exits non-zero when the speed-up is below --min-ratio (4x by default, from issue 3). The
standalone version of section 4 of scripts/benchmark.py (`benchmarks.histograms`).

    python scripts/bench_histograms.py [--device cuda] [--repeats 5]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout without installing

from benchmarks.histograms import standalone  # noqa: E402

if __name__ == "__main__":
    sys.exit(standalone())
