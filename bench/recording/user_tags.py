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
# Every tag the harness writes itself, on a parent, group, cell, reproduction, comparison or
# parity run, in one place: a user's tag of the same name would be overwritten by it, or would
# pass for it (a `resumes` of "abc" broke every later `run --resume`).
RESERVED = frozenset(
    {
        # what a run is, and which invocation and group it belongs to
        "kind",
        "invocation",
        "group_run",
        "stage",
        "backend",
        "device",
        "seed",
        # how it went
        "outcome",
        "error",
        "expectation_met",
        "speed_stable",
        "speed_unstable_reason",
        "canary_unreliable",
        "machine_busy",
        "retries",
        "retried_after",
        # where it came from, who owns it, and its resumptions
        "command",
        "git_commit",
        "git_dirty",
        "owner_host",
        "owner_pid",
        "owner_started",
        "resumes",
        # reproduce, compare and parity runs
        "reproduces",
        "bit_identical",
        "environment_differences",
        "baseline",
        "candidate",
        "verdict",
        "exit_code",
        "passed",
    }
)
# Families of harness tags named per device, backend or node.
RESERVED_PREFIXES = ("mlflow.", "machine_peak", "peak_", "node_", "keras_fit_")


def parse_tag(text: str) -> tuple[str, str]:
    """An argparse type: KEY=VALUE, checked; the message says what a good one looks like."""
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    if not _KEY.match(key):
        raise argparse.ArgumentTypeError(
            f"tag key {key!r} must start with a letter and hold letters, digits, _ . - only"
        )
    if key in RESERVED or key.startswith(RESERVED_PREFIXES):
        raise argparse.ArgumentTypeError(f"tag key {key!r} is the harness's own; choose another")
    if not _VALUE.match(value):
        raise argparse.ArgumentTypeError(
            f"tag value {value!r} must be 1-200 letters, digits or _ . : / + -"
        )
    return key, value
