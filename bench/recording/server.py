"""A team's shared tracking server: `mlflow server` on a PostgreSQL backend store, serving the
artifacts itself (clients upload and download them through it, so no shared disk is needed).

PostgreSQL is Debian's `postgresql` package: a real server that a team runs on a host anyway,
started with `pg_ctlcluster` and run as the `postgres` user (it refuses to run as root). Where
this process may (root, on the database's own host), `prepare_database` starts the cluster and
makes the role and database; elsewhere it says in one line what to run.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from bench.core.errors import BenchError

DATABASE_ENV = "MLP_BENCH_DATABASE_URI"
DEFAULT_DATABASE = "postgresql://mlp_bench:mlp_bench@127.0.0.1:5432/mlp_bench"
SERVER_PORT = 5050  # `bench ui` has 5000
_LOCAL = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class Database:
    """The parts of a postgresql:// URI that setting one up needs."""

    uri: str
    host: str
    port: int
    user: str
    password: str
    name: str

    @classmethod
    def parse(cls, uri: str) -> Database:
        parsed = urllib.parse.urlparse(uri)
        if parsed.scheme not in ("postgresql", "postgresql+psycopg") or not parsed.path[1:]:
            raise BenchError(
                f"{uri!r} is not a postgresql://USER:PASSWORD@HOST:PORT/DATABASE URI; give one"
                f" with --database-uri or {DATABASE_ENV}"
            )
        return cls(
            uri,
            parsed.hostname or "127.0.0.1",
            parsed.port or 5432,
            urllib.parse.unquote(parsed.username or ""),
            urllib.parse.unquote(parsed.password or ""),
            parsed.path[1:],
        )

    @property
    def libpq_uri(self) -> str:
        """The URI as libpq reads it (no SQLAlchemy driver suffix)."""
        return self.uri.replace("postgresql+psycopg://", "postgresql://", 1)

    def redacted(self) -> str:
        return self.uri.replace(f":{self.password}@", ":***@") if self.password else self.uri


def connect_error(database: Database) -> str | None:
    """Why the database cannot be used now (None: it can), in PostgreSQL's own words."""
    import psycopg  # the driver MLflow's SQLAlchemy picks for postgresql://

    try:
        psycopg.connect(database.libpq_uri, connect_timeout=5).close()
    except psycopg.OperationalError as exc:
        return " ".join(str(exc).split())
    return None


def prepare_database(database: Database) -> None:
    """Make the database usable: start the local cluster if it is down, make the role and the
    database if they are missing. Only on the database's own host, as root; else one line
    naming what to do."""
    error = connect_error(database)
    if error is None:
        return
    local = database.host in _LOCAL
    if not local or not _can_admin():
        raise BenchError(
            f"PostgreSQL at {database.redacted()} is not usable ({error[:200]}); start it and"
            f" create the role and database (README, 'A shared tracking server'), or give"
            f" another --database-uri"
        )
    if "Connection refused" in error or "could not connect" in error:
        _start_cluster(database.port)
    if connect_error(database) is not None:
        _create_role_and_database(database)
    error = connect_error(database)
    if error is not None:
        raise BenchError(f"PostgreSQL at {database.redacted()} is still not usable ({error})")


def _can_admin() -> bool:
    """Whether this process can act as the `postgres` user: root, with Debian's tools."""
    return os.geteuid() == 0 and shutil.which("runuser") is not None


def _start_cluster(port: int) -> None:
    """Start the Debian cluster that listens on `port` (`pg_lsclusters` lists them)."""
    if shutil.which("pg_lsclusters") is None:
        raise BenchError(
            "PostgreSQL is not installed here; apt-get install postgresql (Debian's package)"
        )
    listed = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True, check=True)
    for line in listed.stdout.splitlines():
        version, name, cluster_port, status = line.split()[:4]
        if int(cluster_port) == port:
            if status != "online":
                subprocess.run(["pg_ctlcluster", version, name, "start"], check=True)
            return
    raise BenchError(
        f"no PostgreSQL cluster listens on port {port} (pg_lsclusters); create one with"
        f" `pg_createcluster --port {port} VERSION NAME`, or give another --database-uri"
    )


def _create_role_and_database(database: Database) -> None:
    """The role (with its password) and the database it owns, made as the `postgres` user."""

    def psql(sql: str, *flags: str) -> str:
        done = subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                "psql",
                "-p",
                str(database.port),
                *flags,
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise BenchError(f"PostgreSQL refused `{sql.split(' PASSWORD')[0]}`: {done.stderr}")
        return done.stdout

    role, name = _identifier(database.user), _identifier(database.name)
    password = database.password.replace("'", "''")
    exists = psql(f"SELECT 1 FROM pg_roles WHERE rolname = '{database.user}'", "-tA").strip()
    verb = "ALTER" if exists else "CREATE"
    psql(f"{verb} ROLE {role} LOGIN PASSWORD '{password}'")
    found = psql(f"SELECT 1 FROM pg_database WHERE datname = '{database.name}'", "-tA").strip()
    if not found:
        psql(f"CREATE DATABASE {name} OWNER {role}")


def _identifier(name: str) -> str:
    if not name.replace("_", "").isalnum():
        raise BenchError(f"{name!r}: use letters, digits and _ in the database's user and name")
    return f'"{name}"'


def server_command(
    database: Database, artifacts: Path, host: str, port: int, basic_auth: bool, workers: int
) -> list[str]:
    """`mlflow server` on the database, serving artifacts from a folder of its host."""
    command = [
        sys.executable,  # this environment's mlflow, activated or not
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        database.uri,
        "--serve-artifacts",
        "--artifacts-destination",
        str(artifacts.resolve()),
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    if host not in _LOCAL:  # MLflow 3 refuses Host headers other than localhost by default
        command += ["--allowed-hosts", "*"]
    if basic_auth:
        command += ["--app-name", "basic-auth"]
    return command


def port_free(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def quiet_server_environment() -> None:
    """MLflow 3's server starts job consumers for its GenAI features (7 processes that used 0.4
    of a core while idle, on a host that may be running cells); runs and artifacts need none."""
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")


AUTH_CONFIG_ENV = "MLFLOW_AUTH_CONFIG_PATH"
ADMIN_PASSWORD_ENV = "MLFLOW_AUTH_ADMIN_PASSWORD"


def basic_auth_environment(folder: Path) -> None:
    """What MLflow's basic-auth app needs: its users in a SQLite file in `folder` (the server's
    host keeps them; its own migrations would clash with the tracking store's in one
    database), the admin's first password, and one session key for all workers."""
    import secrets

    if AUTH_CONFIG_ENV not in os.environ:
        config = folder / "basic_auth.ini"
        config.write_text(
            "[mlflow]\n"
            "default_permission = READ\n"
            f"database_uri = sqlite:///{(folder / 'basic_auth.db').resolve()}\n"
            "admin_username = admin\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        )
        os.environ[AUTH_CONFIG_ENV] = str(config)
    if not (folder / "basic_auth.db").exists() and not os.environ.get(ADMIN_PASSWORD_ENV):
        raise BenchError(
            f"--basic-auth: set {ADMIN_PASSWORD_ENV} to the password of the user admin (read"
            " on the first start only)"
        )
    os.environ.setdefault("MLFLOW_FLASK_SERVER_SECRET_KEY", secrets.token_hex(32))
