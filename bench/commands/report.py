"""`python -m bench report RUN_ID`: make an invocation's report again from the store."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.commands.arguments import add_tracking_uri
from bench.recording.run_report import default_report_dir, make_report
from bench.recording.tracking import Tracker, resolve_tracking_uri

NAME = "report"
HELP = "make an invocation's report (description, table, figures, html) again"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", help="the parent run id of a run, perf or parity invocation")
    parser.add_argument(
        "--out",
        help="folder for the files; default reports/<run id> beside"
        " the store (results/reports/<run id>)",
    )
    add_tracking_uri(parser)


def run(args: argparse.Namespace) -> int:
    uri = resolve_tracking_uri(args.tracking_uri)
    tracker = Tracker(uri, experiment=None)
    folder = Path(args.out) if args.out else default_report_dir(uri, args.run_id)
    page = make_report(tracker, args.run_id, folder)
    print(f"report of run {args.run_id}: {page}")
    return 0
