"""`python -m orca`: the same as the `orca` console script."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
