"""`python -m bench list`: stages, backends (installed or not), devices."""

from __future__ import annotations

from backends import BACKENDS, INSTALLED_BY, is_installed
from bench.core.devices import gpu_names
from bench.core.spec import discover_stages


def cmd_list() -> int:
    print("stages:")
    for stage in discover_stages():
        # An invalid file is shown with its reason; it never hides the valid ones.
        spec = stage.spec
        about = (
            f"{spec.description} (tutorial: {spec.expected.tutorial})"
            if spec is not None
            else f"INVALID: {stage.error}"
        )
        print(f"  {stage.name:<12} {about}")
    print("backends:")
    for name in BACKENDS:
        hint = f" ({INSTALLED_BY[name]})" if name in INSTALLED_BY else ""
        print(f"  {name:<12} {'installed' if is_installed(name) else 'not installed' + hint}")
    print("devices:")
    print("  cpu          always")
    for gpu in gpu_names():
        print(f"  gpu          {gpu}")
    return 0
