"""`python -m bench`: see bench.commands.cli."""

import sys

from bench.commands.cli import main

sys.exit(main(prog="python -m bench"))
