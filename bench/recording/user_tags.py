"""`bench run --tag KEY=VALUE`: a user's own label on an invocation's parent run, so that
`bench compare tag:KEY=VALUE` can find the newest run so labelled. Imports nothing heavy: the
command line parses with it before anything else is loaded."""

from __future__ import annotations

import argparse
import re

# Letters, digits and `_ . -`: a key MLflow's search accepts between backticks, and a value
# that a search string can hold between single quotes.
_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,99}$")
_VALUE = re.compile(r"^[A-Za-z0-9_.:/+-]{1,200}$")
# Tags the harness sets itself: a user's tag must not pass for one of them.
RESERVED = frozenset(
    {
        "kind",
        "invocation",
        "stage",
        "backend",
        "device",
        "seed",
        "outcome",
        "speed_stable",
        "speed_unstable_reason",
        "machine_busy",
        "git_commit",
        "git_dirty",
        "owner_host",
        "owner_pid",
        "owner_started",
        "baseline",
        "candidate",
        "verdict",
        "exit_code",
        "expectation_met",
        "error",
    }
)


def parse_tag(text: str) -> tuple[str, str]:
    """An argparse type: KEY=VALUE, checked; the message says what a good one looks like."""
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    if not _KEY.match(key):
        raise argparse.ArgumentTypeError(
            f"tag key {key!r} must start with a letter and hold letters, digits, _ . - only"
        )
    if key in RESERVED or key.startswith(("mlflow.", "machine_peak", "peak_")):
        raise argparse.ArgumentTypeError(f"tag key {key!r} is the harness's own; choose another")
    if not _VALUE.match(value):
        raise argparse.ArgumentTypeError(
            f"tag value {value!r} must be 1-200 letters, digits or _ . : / + -"
        )
    return key, value
