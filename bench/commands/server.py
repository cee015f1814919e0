"""`python -m bench server` (`nox -s server`): a shared MLflow tracking server on PostgreSQL,
serving the runs' artifacts; `bench run --tracking-uri http://HOST:PORT` records into it."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from bench.commands.arguments import int_in
from bench.core.program import PROGRAM
from bench.recording import store
from bench.recording.mlflow_server import (
    DATABASE_ENV,
    DEFAULT_DATABASE,
    SERVER_PORT,
    Database,
    backend_store_environment,
    basic_auth_environment,
    check_listen,
    prepare_database,
    quiet_server_environment,
    server_command,
    users_folder,
)

NAME = "server"
HELP = "a shared MLflow tracking server on PostgreSQL (nox -s server)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (this host only)")
    parser.add_argument("--port", type=int_in(1, 65535), default=SERVER_PORT)
    parser.add_argument(
        "--database-uri",
        help=f"postgresql://USER:PASSWORD@HOST:PORT/DB (or {DATABASE_ENV}); default"
        f" {DEFAULT_DATABASE}",
    )
    parser.add_argument("--artifacts", help="folder the server keeps artifacts in")
    parser.add_argument(
        "--basic-auth",
        action="store_true",
        help="MLflow's basic-auth app: clients log in with MLFLOW_TRACKING_USERNAME/PASSWORD",
    )
    parser.add_argument("--workers", type=int_in(1, 64), default=4)


def run(args: argparse.Namespace) -> int:
    database = Database.parse(args.database_uri or os.environ.get(DATABASE_ENV, DEFAULT_DATABASE))
    check_listen(args.host, args.port)
    if args.basic_auth:
        basic_auth_environment(users_folder(store.RESULTS_DIR, database))
    prepare_database(database)
    artifacts = Path(args.artifacts or store.RESULTS_DIR / "server-artifacts")
    artifacts.mkdir(parents=True, exist_ok=True)
    command = server_command(artifacts, args.host, args.port, args.basic_auth, args.workers)
    where = f"http://{args.host}:{args.port}"
    print(f"MLflow tracking server on {database.redacted()}, artifacts in {artifacts}", flush=True)
    print(f"record into it with: {PROGRAM} run --tracking-uri {where}", flush=True)
    backend_store_environment(database)
    quiet_server_environment()
    os.execvp(command[0], command)  # the server replaces this process: Ctrl-C stops it
