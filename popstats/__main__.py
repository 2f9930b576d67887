"""``python -m popstats``: the popstats command line."""

import sys

from popstats._src.inspection.cli import main

if __name__ == "__main__":
    sys.exit(main())
