"""`python -m bench record-pending FOLDER`: record the cells a store could not take.

A store that stayed locked or read-only past the wait leaves each trained cell in FOLDER/RUN_ID
(see bench.recording.unrecorded); once the store takes writes again, this records each into its
own run, ends it with its true status, and removes its folder. An invocation whose cells are
then all recorded is ended as it would have been (FINISHED, with its report).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from bench.execution.invocation import end_recorded
from bench.recording.reader import INVOCATION_TAG
from bench.recording.tracking import Tracker
from bench.recording.unrecorded import KeptCell, kept_folders, load

NAME = "record-pending"
HELP = "record the cells a locked or read-only store could not take"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="the folder the error named (.../unrecorded)")


def _recorded_already(tracker: Tracker, kept: KeptCell) -> bool:
    """Whether the cell's run was ended by an earlier record-pending (of this folder or a copy
    of it): recording it again would add its final metrics a second time."""
    run = tracker.reader.run(
        kept.run_id,
        f"{kept.run.cell.name}: no run {kept.run_id} in {tracker.shown_uri}; its pending.json"
        " names another store, or the run was deleted",
    )
    return run.status in ("FINISHED", "FAILED") or "outcome" in run.tags


def _record(tracker: Tracker, kept: KeptCell) -> None:
    run, run_id = kept.run, kept.run_id
    if run.result is None:
        tracker.record_failed(run_id, run.error or "", kept.files)
        return
    logged = tracker.reader.epochs_logged(run_id)  # those flushed before the store stopped
    epochs = [e for e in run.result.epochs if e.epoch > logged]
    if epochs:
        tracker.log_epochs(run_id, epochs)
    tracker.log_cell_details(run_id, run.result, kept.files)
    tags = run.load.tags() if run.load is not None else {}
    tracker.log_cell_finals(run_id, run.result, run.speed, tags)


def run(args: argparse.Namespace) -> int:
    folders = kept_folders(Path(args.folder))
    trackers: dict[str, Tracker] = {}
    invocations: dict[str, set[str]] = {}  # store -> the parents of the cells recorded
    for folder in folders:
        kept = load(folder)
        if kept.uri not in trackers:
            trackers[kept.uri] = Tracker(kept.uri, experiment=None)
        tracker = trackers[kept.uri]
        if _recorded_already(tracker, kept):
            shutil.rmtree(folder)
            print(f"{kept.run.cell.name}: run {kept.run_id} is recorded already; skipped")
            continue
        _record(tracker, kept)
        shutil.rmtree(folder)
        where = f"run {kept.run_id} ({tracker.shown_uri})"
        print(f"recorded {kept.run.cell.name} into {where}", flush=True)
        parent = tracker.reader.run(kept.run_id, f"no run {kept.run_id}").tags.get(INVOCATION_TAG)
        if parent:
            invocations.setdefault(kept.uri, set()).add(parent)
    for uri, parents in invocations.items():
        for parent in sorted(parents):
            print(end_recorded(trackers[uri], parent), flush=True)
    if not folders:
        print(f"nothing to record in {args.folder}")
    return 0
