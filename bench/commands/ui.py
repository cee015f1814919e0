"""`python -m bench ui`: serve a store's MLflow UI, after pointing a moved or copied store at
its own artifacts (bench.recording.store.rebase_artifacts), so that `results/` copied from another
machine opens with its reports and figures."""

from __future__ import annotations

import argparse
import os
import shlex

from bench.commands.arguments import add_tracking_uri, int_in
from bench.core.errors import BenchError
from bench.core.program import PROGRAM
from bench.recording import store, views
from bench.recording.links import UI_HOST, UI_PORT, cells_url, ui_command, view_url
from bench.recording.mlflow_server import check_listen, quiet_server_environment
from bench.recording.tracking import Tracker, resolve_tracking_uri

NAME = "ui"
HELP = "serve a store's MLflow UI (a moved or copied results/ included)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int_in(1, 65535), help="default 5000")
    add_tracking_uri(parser, "a SQLite store (or MLFLOW_TRACKING_URI)")


def run(args: argparse.Namespace) -> int:
    uri = resolve_tracking_uri(args.tracking_uri)
    database = store.sqlite_path(uri)
    if database is None:
        shown = store.redacted(uri)  # a server's URI may hold a password
        raise BenchError(f"{shown} is a server: open it in a browser; `{PROGRAM} ui` serves SQLite")
    if not database.is_file():
        raise BenchError(f"no store at {database}; give a store's --tracking-uri sqlite:///PATH")
    port = args.port or UI_PORT
    check_listen(UI_HOST, port)  # a taken port: the URLs would open another process's UI
    tracker = Tracker(uri, experiment=None)  # checks the store and rebases it
    for experiment_id, name in tracker.reader.experiments().items():
        # The newest invocation's saved view; the cells' URL where none was saved (an older
        # MLflow, or a store no invocation finished in).
        key = views.latest(tracker.reader, experiment_id)
        url = (
            view_url(uri, experiment_id, key, port)
            if key is not None
            else cells_url(uri, experiment_id, port=port)
        )
        print(f"{name}: {url}")
    command = shlex.split(ui_command(uri, port))
    print(" ".join(command), flush=True)
    quiet_server_environment()
    os.execvp(command[0], command)  # the server replaces this process: Ctrl-C stops it
