"""`python -m callbacks_kit ...` runs the console script."""

import sys

from callbacks_kit.cli import main

if __name__ == "__main__":
    sys.exit(main())
