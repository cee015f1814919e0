"""`python -m bench server` (`nox -s server`): a shared MLflow tracking server on PostgreSQL,
serving the runs' artifacts; `bench run --tracking-uri http://HOST:PORT` records into it."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from bench.core.errors import BenchError
from bench.core.program import PROGRAM
from bench.recording import store
from bench.recording.server import (
    DATABASE_ENV,
    DEFAULT_DATABASE,
    Database,
    basic_auth_environment,
    port_free,
    prepare_database,
    quiet_server_environment,
    server_command,
)


def cmd_server(args: argparse.Namespace) -> int:
    database = Database.parse(args.database_uri or os.environ.get(DATABASE_ENV, DEFAULT_DATABASE))
    if not port_free(args.host, args.port):
        raise BenchError(f"port {args.port} on {args.host} is taken; pass another --port")
    artifacts = Path(args.artifacts or store.RESULTS_DIR / "server-artifacts")
    artifacts.mkdir(parents=True, exist_ok=True)
    if args.basic_auth:
        basic_auth_environment(artifacts.parent)
    prepare_database(database)
    command = server_command(
        database, artifacts, args.host, args.port, args.basic_auth, args.workers
    )
    where = f"http://{args.host}:{args.port}"
    print(f"MLflow tracking server on {database.redacted()}, artifacts in {artifacts}", flush=True)
    print(f"record into it with: {PROGRAM} run --tracking-uri {where}", flush=True)
    quiet_server_environment()
    os.execvp(command[0], command)  # the server replaces this process: Ctrl-C stops it
