"""Print what a TensorBoard run contains, per plugin: `python scripts/inspect_run.py RUN [--json]`."""

import sys

from callbacks_kit.inspect_run import main

if __name__ == "__main__":
    sys.exit(main())
