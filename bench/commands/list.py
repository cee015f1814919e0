"""`python -m bench list`: stages, backends (installed or not), devices."""

from __future__ import annotations

import argparse

from backends import BACKENDS, is_installed
from bench.core.devices import gpu_names
from bench.core.spec import discover_stages

NAME = "list"
HELP = "show stages, backends and devices"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`list` takes no arguments."""


def run(args: argparse.Namespace) -> int:
    print("stages:")
    for stage in discover_stages():
        # An invalid file is shown with its reason; it never hides the valid ones.
        spec = stage.spec
        about = (
            f"{spec.description} (tutorial: {spec.expected.tutorial})"
            if spec is not None
            else f"INVALID: {stage.error}"
        )
        if spec is not None and not spec.run_by_default:
            about += " [runs when named: --stage]"
        print(f"  {stage.name:<12} {about}")
    print("backends:")
    for name in BACKENDS:
        state = "installed" if is_installed(name) else f"not installed ({BACKENDS[name].install})"
        print(f"  {name:<12} {state}")
    print("devices:")
    print("  cpu          always")
    for gpu in gpu_names():
        print(f"  gpu          {gpu}")
    return 0
