"""`python -m bench server` (`nox -s server`): a shared MLflow tracking server on PostgreSQL,
serving the runs' artifacts; `bench run --tracking-uri http://HOST:PORT` records into it."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from bench.core.program import PROGRAM
from bench.recording import store
from bench.recording.mlflow_server import (
    DATABASE_ENV,
    DEFAULT_DATABASE,
    Database,
    backend_store_environment,
    basic_auth_environment,
    check_listen,
    prepare_database,
    quiet_server_environment,
    server_command,
    users_folder,
)


def cmd_server(args: argparse.Namespace) -> int:
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
