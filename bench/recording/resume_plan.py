"""An invocation's plan (invocation.json on its parent run) and its finished cells, read back
for `run --resume`.

The file is an artifact anyone can edit on disk or re-upload; the parent's params are written
once. What a resume runs must be what the parent recorded, so the file is checked against them:
its digest (param invocation_sha256) where recorded, else the params it derives from.
"""

from __future__ import annotations

import hashlib
import json
import socket
from dataclasses import dataclass
from typing import Any

from bench.core.errors import BenchError
from bench.core.options import Options
from bench.core.seeding import describe_seeds
from bench.core.types import Cell
from bench.recording import store
from bench.recording.reader import Reader, cell_of
from bench.recording.stats import Member

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


@dataclass(frozen=True)
class RecordedInvocation:
    """A `bench run` invocation as the store holds it: what it planned, what finished."""

    parent_id: str
    experiment: str
    plan: dict[str, Any]  # cells, options, stage texts: see invocation.invocation_plan
    finished: dict[Cell, Member]  # cells with a FINISHED run
    group_ids: dict[str, str]  # group -> its run
    open_runs: list[str]  # its runs still RUNNING, left by a process that is gone
    resumes: int = 0  # how many resumes claimed it before (see Tracker.claim_resume)

    @property
    def cells(self) -> list[Cell]:
        return [Cell(**cell) for cell in self.plan["cells"]]

    def unfinished(self) -> list[Cell]:
        """Its cells with no FINISHED run (never started, interrupted, failed), in order."""
        return [cell for cell in self.cells if cell not in self.finished]


def load_invocation(reader: Reader, parent_id: str) -> RecordedInvocation:
    """A `bench run` invocation read back to be resumed; one that is still running here
    (or being resumed), or whose plan is missing or disagrees with its params, is an error."""
    parent = reader.run(
        parent_id,
        f"no run {parent_id!r} in {reader.shown_uri}; give the id `bench run` printed after"
        " 'recorded as parent run', with the store it is in (--tracking-uri)",
    )
    tags = parent.tags
    if tags.get("kind") != "matrix":
        raise BenchError(
            f"run {parent_id} is not a `bench run` invocation (kind {tags.get('kind')!r});"
            " give the id printed after 'recorded as parent run'"
        )
    claims = resume_claims(parent.params)
    if claims and here(claims[-1]) and not store.owner_gone(claims[-1]):
        raise BenchError(being_resumed(parent_id, claims[-1]))
    if parent.status == "RUNNING" and here(tags) and not store.owner_gone(tags):
        raise BenchError(
            f"invocation {parent_id} is still running (pid {tags.get('owner_pid')});"
            " let it finish or stop it, then resume"
        )
    experiment = reader.experiment_name(parent.experiment_id)
    text = reader.text(parent_id, INVOCATION_FILE)
    if text is None:
        raise BenchError(
            f"invocation {parent_id} was recorded without its plan (by an mlp-bench"
            " older than --resume); run its command again instead"
        )
    plan = checked_plan(parent_id, text, parent.params)
    finished, group_ids, open_runs = {}, {}, []
    for run in reader.invocation_runs(parent):
        if run.status == "RUNNING":
            open_runs.append(run.run_id)
        if run.kind == "group":
            group_ids[cell_of(run.tags, seed=0).group] = run.run_id
        elif run.kind == "cell" and run.status == "FINISHED":
            finished[cell_of(run.tags)] = Member(
                run.tags.get("outcome", "failed"),
                run.metrics.get("test_accuracy"),
                run.metrics.get("train_samples_per_s"),
            )
    if parent.status == "RUNNING":
        open_runs.append(parent_id)
    # An older mlp-bench counted resumes in the tag alone (a user's tag could say "abc").
    counted = tags.get("resumes", "")
    resumes = max(len(claims), int(counted) if counted.isdigit() else 0)
    return RecordedInvocation(parent_id, experiment, plan, finished, group_ids, open_runs, resumes)


CLAIM_PREFIX = "resume_claim."  # a parent's params: the processes that resumed it, in order


def resume_claims(params: dict[str, str]) -> list[dict[str, str]]:
    """The owner tags of the processes that claimed a parent's resumes, oldest first."""
    numbered = {}
    for key, value in params.items():
        number = key.removeprefix(CLAIM_PREFIX)
        if key.startswith(CLAIM_PREFIX) and number.isdigit():
            numbered[int(number)] = owner_of(value)
    return [numbered[n] for n in sorted(numbered)]


def owner_of(claim: str) -> dict[str, str]:
    """A claim's owner tags ({} where the value is not what claim_resume writes)."""
    try:
        owner = json.loads(claim)
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in owner.items()} if isinstance(owner, dict) else {}


def here(owner: dict[str, str]) -> bool:
    """Whether the owner is a process of this host. Another host's process cannot be asked
    whether it is alive: a claim stops only a resume that planned before it (as the key
    already taken), not a later one from there."""
    return owner.get("owner_host") == socket.gethostname()


def being_resumed(parent_id: str, owner: dict[str, str]) -> str:
    return (
        f"invocation {parent_id} is being resumed by another process (pid"
        f" {owner.get('owner_pid', '?')} on {owner.get('owner_host', '?')}); let it finish,"
        " then resume again if cells remain"
    )
