"""`python -m benchmarks`: the same as `python scripts/benchmark.py`."""

import sys

from benchmarks.suite import main

sys.exit(main())
