"""``python -m emotion``: the command-line interface."""

import sys

from emotion.cli import main

if __name__ == "__main__":
    sys.exit(main())
