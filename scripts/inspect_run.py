"""Print what a TensorBoard run contains, per plugin: `python scripts/inspect_run.py RUN [--json]`."""

import sys

from callbacks_kit.cli import main

if __name__ == "__main__":
    sys.exit(main(["inspect", *sys.argv[1:]]))
