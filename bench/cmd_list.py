"""`python -m bench list`: stages, backends (installed or not), devices."""

from __future__ import annotations

from backends import BACKENDS, is_installed
from bench.devices import gpu_names
from bench.spec import STAGE_NAMES, load_stage


def cmd_list() -> int:
    print("stages:")
    for name in STAGE_NAMES:
        spec = load_stage(name)
        print(f"  {name:<12} {spec.description} (tutorial: {spec.expected.tutorial_reported})")
    print("backends:")
    for name in BACKENDS:
        print(f"  {name:<12} {'installed' if is_installed(name) else 'not installed'}")
    print("devices:")
    print("  cpu          always")
    for gpu in gpu_names():
        print(f"  gpu          {gpu}")
    return 0
