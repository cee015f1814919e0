"""`python -m bench report RUN_ID`: make an invocation's report again from the store."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.recording.run_report import default_report_dir, make_report
from bench.recording.tracking import Tracker, resolve_tracking_uri


def cmd_report(args: argparse.Namespace) -> int:
    uri = resolve_tracking_uri(args.tracking_uri)
    tracker = Tracker(uri, experiment=None)
    folder = Path(args.out) if args.out else default_report_dir(uri, args.run_id)
    page = make_report(tracker, args.run_id, folder)
    print(f"report of run {args.run_id}: {page}")
    return 0
