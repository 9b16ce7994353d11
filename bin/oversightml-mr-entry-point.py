#!/usr/bin/env python3
"""Container entry point, as the reference's: ``python3 bin/oversightml-mr-entry-point.py [-v]``."""

import sys

from modelrunner.cli import main

if __name__ == "__main__":
    sys.exit(main(["worker", *sys.argv[1:]]))
