"""A team's shared tracking server: `mlflow server` on a PostgreSQL backend store, serving the
artifacts itself (clients upload and download them through it, so no shared disk is needed).

PostgreSQL is Debian's `postgresql` package: a real server that a team runs on a host anyway,
started with `pg_ctlcluster` and run as the `postgres` user (it refuses to run as root). Where
this process may (root, on the database's own host), `prepare_database` starts the cluster and
makes the role and database; elsewhere it says in one line what to run.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import socket
import subprocess
import sys
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from bench.core.errors import BenchError
from bench.recording import store

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
        """The URI to print: its password replaced by *** as it is written there, percent-encoded
        or not, and a `password=` in its query too (libpq reads one there)."""
        return store.redacted(self.uri)

    @property
    def key(self) -> str:
        """A folder name for what belongs to this database alone."""
        return f"{self.host.replace(':', '_')}-{self.port}-{self.name}"


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
        # The SQL goes in on stdin: in `-c` a role's password would be on psql's command line,
        # which every user of the host can read (ps).
        done = subprocess.run(
            ["runuser", "-u", "postgres", "--", "psql", "-p", str(database.port), *flags],
            input=f"\\set ON_ERROR_STOP on\n{sql}\n",
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


BACKEND_STORE_ENV = "MLFLOW_BACKEND_STORE_URI"  # `mlflow server --backend-store-uri`'s variable


def backend_store_environment(database: Database) -> None:
    """The database's URI, its password with it, for `mlflow server` (and the workers it starts)
    to read from the environment, which only its owner can read: on the command line every user
    of the host would see it (ps)."""
    os.environ[BACKEND_STORE_ENV] = database.uri


def server_command(
    artifacts: Path, host: str, port: int, basic_auth: bool, workers: int
) -> list[str]:
    """`mlflow server` on the database (backend_store_environment), serving artifacts from a
    folder of its host."""
    command = [
        sys.executable,  # this environment's mlflow, activated or not
        "-m",
        "mlflow",
        "server",
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


def check_listen(host: str, port: int) -> None:
    """Refuse, in one line and before anything starts, an address a server could not listen on:
    started, it would fail only after its URLs were printed, which open another process's UI."""
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        raise BenchError(
            f"--host {host} is not an address of this machine or a name it resolves; give one"
            " of its addresses (127.0.0.1 for this host only, 0.0.0.0 for all)"
        ) from None
    family, kind, protocol, _, address = found[0]
    with socket.socket(family, kind, protocol) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
        try:
            probe.bind(address)
        except OSError as exc:
            raise BenchError(_bind_refusal(host, port, exc)) from None


def _bind_refusal(host: str, port: int, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return f"port {port} on {host} is taken by another process; pass another --port N"
    if exc.errno == errno.EADDRNOTAVAIL:
        return (
            f"--host {host} is not an address of this machine, so it cannot be bound; give one"
            " of its addresses (127.0.0.1 for this host only, 0.0.0.0 for all)"
        )
    if exc.errno == errno.EACCES:
        return f"port {port} needs root to listen on; pass --port N above 1023"
    return f"cannot listen on {host} port {port} ({exc.strerror}); pass another --host or --port"


def quiet_server_environment() -> None:
    """MLflow 3's server starts job consumers for its GenAI features (7 processes that used 0.4
    of a core while idle, on a host that may be running cells); runs and artifacts need none."""
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")


AUTH_CONFIG_ENV = "MLFLOW_AUTH_CONFIG_PATH"
ADMIN_USERNAME_ENV = "MLFLOW_AUTH_ADMIN_USERNAME"
ADMIN_PASSWORD_ENV = "MLFLOW_AUTH_ADMIN_PASSWORD"
# MLflow 3 refuses to make its first admin with this password (the one older releases shipped)
# or with one shorter than this (mlflow.server.auth.create_admin_user).
_LEGACY_ADMIN_PASSWORD = "password1234"
_MIN_PASSWORD = 12


def users_folder(results: Path, database: Database) -> Path:
    """Where the basic-auth users of the server on `database` are kept: a folder of their own,
    one per tracking database, since their permissions name its experiments and models by id.
    Not in the artifacts folder (the server hands its files to any client: the password hashes
    with them), nor beside it (--artifacts /srv/runs would write into /srv, a folder that is
    not the server's)."""
    return results / "server-users" / database.key


def basic_auth_environment(folder: Path) -> None:
    """What MLflow's basic-auth app needs: its users in a SQLite file in `folder` (its own
    migrations would clash with the tracking store's in one database), an admin password it
    accepts, and one session key for all workers. A problem MLflow would raise with a
    traceback once started is refused here in one line."""
    import secrets

    given = os.environ.get(AUTH_CONFIG_ENV)
    config = Path(given) if given else folder / "basic_auth.ini"
    text = _auth_config(folder)
    if given:
        text = config.read_text() if config.is_file() else ""
    _check_admin(_read_admin(text, config))
    if not given:  # written once it is known to start
        folder.mkdir(parents=True, exist_ok=True)
        config.write_text(text)
        os.environ[AUTH_CONFIG_ENV] = str(config)
    os.environ.setdefault("MLFLOW_FLASK_SERVER_SECRET_KEY", secrets.token_hex(32))


def _auth_config(folder: Path) -> str:
    return (
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = sqlite:///{(folder / 'basic_auth.db').resolve()}\n"
        "admin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )


@dataclass(frozen=True)
class _Admin:
    """The admin as MLflow's basic-auth app will see it."""

    users: Path | None  # the SQLite file of users; None where they are kept elsewhere
    username: str
    password: str | None


def _read_admin(text: str, config_path: Path) -> _Admin:
    """The basic-auth configuration, read as MLflow reads it (mlflow.server.auth.config): a
    variable that is set wins over the file, even when empty."""
    import configparser

    config = configparser.ConfigParser()
    with contextlib.suppress(configparser.Error):  # named below, as a file without [mlflow]
        config.read_string(text)
    if not config.has_section("mlflow"):
        raise BenchError(
            f"{AUTH_CONFIG_ENV}={config_path} is not a basic-auth .ini with an [mlflow] section;"
            f" fix it, or unset {AUTH_CONFIG_ENV} to let the server write its own"
        )
    section = config["mlflow"]

    def setting(variable: str, key: str) -> str | None:
        return (os.environ[variable] if variable in os.environ else section.get(key)) or None

    uri = section.get("database_uri", "")
    users = Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None
    username = setting(ADMIN_USERNAME_ENV, "admin_username") or "admin"
    return _Admin(users, username, setting(ADMIN_PASSWORD_ENV, "admin_password"))


def _check_admin(admin: _Admin) -> None:
    if admin.users is None:
        return  # not a file here: MLflow checks it when it starts
    stored = _stored_password_hash(admin)
    if stored is None:
        problem = _password_problem(admin)
        if problem:
            raise BenchError(f"--basic-auth: {problem}")
        return
    from werkzeug.security import check_password_hash  # MLflow's own hashing (Flask's)

    if admin.password and not check_password_hash(stored, admin.password):
        raise BenchError(
            f"--basic-auth: the user {admin.username} in {admin.users} already has another"
            f" password than {ADMIN_PASSWORD_ENV} (MLflow reads it on the first start only);"
            f" unset {ADMIN_PASSWORD_ENV} to keep the stored one, or delete {admin.users} to"
            " start again with no users"
        )


def _stored_password_hash(admin: _Admin) -> str | None:
    """The admin's password hash in the users file; None where there is no such user yet."""
    import sqlite3

    assert admin.users is not None
    if not admin.users.is_file():
        return None
    try:
        with contextlib.closing(
            sqlite3.connect(f"file:{admin.users.resolve()}?mode=ro", uri=True)
        ) as users:
            row = users.execute(
                "SELECT password_hash FROM users WHERE username = ?", (admin.username,)
            ).fetchone()
    except sqlite3.OperationalError:
        return None  # no users table yet: MLflow makes it
    except sqlite3.DatabaseError as exc:
        raise BenchError(
            f"--basic-auth: {admin.users} is not a users database ({exc}); move it away to"
            " start with no users"
        ) from None
    return str(row[0]) if row else None


def _password_problem(admin: _Admin) -> str | None:
    """Why MLflow would refuse the password for its first admin (None: it would not)."""
    password = admin.password
    if not password:
        return (
            f"set {ADMIN_PASSWORD_ENV} to the password of the user {admin.username} (read on the"
            " first start only)"
        )
    if password == _LEGACY_ADMIN_PASSWORD:
        return (
            f"{ADMIN_PASSWORD_ENV} is the default password older MLflow releases shipped, which"
            " MLflow refuses; set it to another"
        )
    if len(password) < _MIN_PASSWORD:
        return (
            f"{ADMIN_PASSWORD_ENV} has {len(password)} characters; MLflow requires at least"
            f" {_MIN_PASSWORD}: set a longer one"
        )
    return None
