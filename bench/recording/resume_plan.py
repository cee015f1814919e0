"""An invocation's plan (invocation.json on its parent run) read back for `run --resume`.

The file is an artifact anyone can edit on disk or re-upload; the parent's params are written
once. What a resume runs must be what the parent recorded, so the file is checked against them:
its digest (param invocation_sha256) where recorded, else the params it derives from.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from bench.core.errors import BenchError
from bench.core.options import Options
from bench.core.seeding import describe_seeds
from bench.core.types import Cell

INVOCATION_FILE = "invocation.json"  # on a parent run: what it planned to run
PLAN_DIGEST = "invocation_sha256"  # on a parent run: the digest of its invocation.json
PLAN_KEYS = frozenset(
    {"cells", "options", "stage_texts", "seeds", "measure_peaks", "cell_timeout_s"}
)


def plan_digest(plan: dict[str, Any]) -> str:
    """The digest of a plan as JSON with sorted keys: the same for the dict written and the
    dict read back."""
    return hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()


def checked_plan(parent_id: str, text: str, params: dict[str, str]) -> dict[str, Any]:
    """The plan in `text`, if it is well formed and agrees with the parent's params."""

    def refuse(why: str) -> BenchError:
        return BenchError(
            f"invocation {parent_id}'s {INVOCATION_FILE} {why}, so resuming it would not run"
            " what the run recorded; run its command again instead"
        )

    try:
        plan = json.loads(text)
    except ValueError as exc:
        raise refuse(f"is not valid JSON ({exc})") from None
    if not isinstance(plan, dict) or set(plan) != PLAN_KEYS:
        keys = sorted(plan) if isinstance(plan, dict) else type(plan).__name__
        raise refuse(f"holds {keys}, not the keys {sorted(PLAN_KEYS)}")
    digest = params.get(PLAN_DIGEST)
    if digest is not None and digest != plan_digest(plan):
        raise refuse(f"was changed after it was recorded (it no longer matches {PLAN_DIGEST})")
    try:
        expected = _params_of(plan)
    except (TypeError, ValueError, AttributeError) as exc:
        raise refuse(f"is malformed ({type(exc).__name__}: {exc})") from None
    differ = [key for key, value in expected.items() if key in params and params[key] != value]
    if differ:
        key = differ[0]
        raise refuse(f"says {key} {expected[key]!r} where the run recorded {params[key]!r}")
    return plan


def _params_of(plan: dict[str, Any]) -> dict[str, str]:
    """The parent params a well-formed plan implies (older parents have no digest, only these).
    Raises TypeError or ValueError where the plan is malformed."""
    cells = [Cell(**cell) for cell in plan["cells"]]
    options = Options(**plan["options"])
    seeds = [int(seed) for seed in plan["seeds"]]
    stages = dict(plan["stage_texts"])
    if not all(isinstance(text, str) for text in stages.values()):
        raise TypeError("a stage text is not a string")
    strays = sorted({c.stage for c in cells} - set(stages)) + [
        f"seed {c.seed}" for c in cells if c.seed not in seeds
    ]
    if strays:
        raise ValueError(f"cells of {', '.join(map(str, strays))} it does not plan")
    return {
        "stages": ",".join(stages),
        "cells": str(len(cells)),
        "seeds": describe_seeds(seeds),
        "epochs": str(options.epochs or "stage file"),
        **options.record(),
    }
