"""`python -m ground ...` (see ground/cli.py)."""

import sys

from ground.cli import main

if __name__ == "__main__":
    sys.exit(main())
