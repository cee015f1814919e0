"""`python -m bench record-pending FOLDER`: record the cells a store could not take.

A store that stayed locked or read-only past the wait leaves each trained cell in FOLDER/RUN_ID
(see bench.recording.unrecorded); once the store takes writes again, this records each into its
own run, ends it with its true status, and removes its folder.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from bench.recording.tracking import Tracker
from bench.recording.unrecorded import KeptCell, kept_folders, load


def _record(tracker: Tracker, kept: KeptCell) -> None:
    run, run_id = kept.run, kept.run_id
    if run.result is None:
        tracker.record_failed(run_id, run.error or "", kept.files)
        return
    logged = tracker.epochs_logged(run_id)  # those flushed before the store stopped
    epochs = [e for e in run.result.epochs if e.epoch > logged]
    if epochs:
        tracker.log_epochs(run_id, epochs)
    tracker.log_cell_details(run_id, run.result, kept.files)
    tags = run.load.tags() if run.load is not None else {}
    tracker.log_cell_finals(run_id, run.result, run.speed, tags)


def cmd_record_pending(args: argparse.Namespace) -> int:
    folders = kept_folders(Path(args.folder))
    trackers: dict[str, Tracker] = {}
    for folder in folders:
        kept = load(folder)
        if kept.uri not in trackers:
            trackers[kept.uri] = Tracker(kept.uri, experiment=None)
        _record(trackers[kept.uri], kept)
        shutil.rmtree(folder)
        print(f"recorded {kept.run.cell.name} into run {kept.run_id} ({kept.uri})", flush=True)
    if not folders:
        print(f"nothing to record in {args.folder}")
    return 0
