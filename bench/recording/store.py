"""The tracking store as a resource: checked before MLflow sees it, opened by one process at a
time, written with a bounded patience, and each open run tagged with the process that owns it.

Imports no mlflow (bench.recording.tracking does); these are the checks and the waiting around it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import socket
import sqlite3
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.core import interrupts
from bench.core.errors import BenchError, StoreUnwritable
from bench.core.program import PROGRAM

_log = logging.getLogger(__name__)
RESULTS_DIR = Path("results")
STORE_RETRY_ENV = "MLP_BENCH_STORE_RETRY_S"
DEFAULT_STORE_RETRY_S = 60.0
MAX_STORE_RETRY_S = 3600.0
# SQLite's words for a store that cannot take a write now: another process holds its lock (past
# MLflow's own 20 s wait), or the file or its folder has become read-only.
_UNWRITABLE = ("database is locked", "readonly database", "unable to open database file")
# A tracking server's words (through MLflow's client) for one that stopped answering: its
# database went down (it answers 5xx) or the server itself did (connection refused or dropped).
_SERVER_DOWN = (
    (re.compile(r"too many (5\d\d) error responses|failed with error code (5\d\d)"), "HTTP {}"),
    (re.compile(r"Connection refused|Failed to establish a new connection"), "connection refused"),
    (re.compile(r"RemoteDisconnected|Connection aborted"), "connection dropped"),
    (re.compile(r"failed with timeout exception|Read timed out"), "no answer in time"),
)
# How long the check below waits for another process's write to end (MLflow waits as long).
_SQLITE_BUSY_S = 20.0


# A password in a URI's user part: `scheme://USER:PASSWORD@`, the password up to the last `@`
# before the host (an unencoded `@` in it included).
_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s/:@]*):[^\s/]*@")
# A password in a URI's query (`?password=...`), which libpq reads as well as the user part.
_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&\s]*")
# The schemes of a database MLflow could be pointed at directly, not through a server.
_DATABASES = ("postgresql", "postgres", "mysql", "mssql", "oracle")


def redacted(text: str) -> str:
    """A URI, or a text holding URIs (a command line), with each password replaced by ***, the
    user kept: what is printed or recorded of a tracking URI, which every reader of the store
    sees."""
    return _QUERY_PASSWORD.sub(r"\1***", _PASSWORD.sub(r"\1:***@", text))


def check_uri(uri: str) -> None:
    """A tracking URI mlp-bench can record into: a SQLite file or a server, not a database's
    own URI (a team's database is shared through `mlp-bench server`) nor a plain path."""
    scheme = urllib.parse.urlsplit(uri).scheme.split("+", 1)[0].lower()
    if scheme in _DATABASES:
        raise BenchError(
            f"tracking URI {redacted(uri)} is a database: serve it with `{PROGRAM} server"
            f" --database-uri {redacted(uri)}` and pass that server's http://HOST:PORT"
            " as --tracking-uri"
        )
    if scheme in ("", "file"):
        raise BenchError(
            f"tracking URI {redacted(uri)} is a plain path (MLflow's retired file store); give"
            " a SQLite file as sqlite:///PATH/mlflow.db, or a server's http://HOST:PORT"
        )


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///PATH` store (None for other stores)."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///").split("?", 1)[0])


def unrecorded_dir(uri: str) -> Path:
    """Where cells the store could not take are kept: beside a SQLite store, else results/."""
    database = sqlite_path(uri)
    folder = database.parent if database is not None else RESULTS_DIR
    return folder.resolve() / "unrecorded"


def _check_sqlite(database: Path, uri: str) -> None:
    """A store MLflow cannot write fails here within seconds, with SQLite's reason: MLflow
    itself retried a folder or a read-only path for 105 s, or failed at the first write."""
    fix = "pass a writable --tracking-uri / MLFLOW_TRACKING_URI"
    if database.is_dir():
        raise BenchError(f"tracking store {uri} is a folder, not a database file; {fix}")
    try:
        database.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(database, timeout=_SQLITE_BUSY_S)
        try:  # a write that is rolled back: the file and its folder must take one
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("CREATE TABLE mlp_bench_write_check (x)")
            connection.execute("ROLLBACK")
        finally:
            connection.close()
    except (OSError, sqlite3.Error) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise BenchError(
            f"tracking store {uri} cannot be written ({reason}); check the file's and its "
            f"folder's permissions, or {fix}"
        ) from None


@contextlib.contextmanager
def opening(uri: str) -> Iterator[None]:
    """Check a SQLite store, then hold its folder's lock while its artifact locations are
    rebased (a moved store) and MLflow creates or migrates the schema and finds or creates the
    experiment: two invocations starting together on a new store raced there (`duplicate
    column name: step`)."""
    database = sqlite_path(uri)
    if database is None:
        yield
        return
    _check_sqlite(database, uri)
    folder = os.open(database.parent, os.O_RDONLY)
    try:
        # A filesystem without flock (some network mounts) opens without the lock.
        with contextlib.suppress(OSError):
            fcntl.flock(folder, fcntl.LOCK_EX)
        for line in rebase_artifacts(database):
            _log.info("store moved: %s", line)
        yield
    finally:
        os.close(folder)


ARTIFACTS = "artifacts"  # a SQLite store's artifacts live in this folder beside it


def rebase_artifacts(database: Path) -> list[str]:
    """Point a moved or copied SQLite store at its own artifacts folder again.

    MLflow records absolute artifact locations (a relative one is resolved when the experiment
    is made), so a `results/` moved or copied elsewhere still points at the old folder: reports
    and compare failed to read, or a copy wrote into its original. The convention here is that
    a store's artifacts are `<its folder>/artifacts`; an experiment whose local location is
    another `.../artifacts` folder that is gone, or whose store brought its own, or that is
    another store's (a store file beside it: only the store was copied), is rewritten there,
    with its runs. Others (a server's, s3://, MLflow's default mlruns/) are left alone.
    Returns one line per experiment rewritten."""
    root = (database.parent / ARTIFACTS).resolve()
    with contextlib.closing(sqlite3.connect(database, timeout=_SQLITE_BUSY_S)) as connection:
        try:
            found = connection.execute(
                "SELECT experiment_id, name, artifact_location FROM experiments"
            ).fetchall()
        except sqlite3.OperationalError:  # a new store: MLflow has not made its tables yet
            return []
        moved = []
        with connection:  # one transaction: all experiments rewritten, or none
            for experiment_id, name, location in found:
                old = _local_folder(location)
                if old is None or old.name != ARTIFACTS or old == root:
                    continue
                if old.exists() and not root.exists() and not _other_store(old, database):
                    continue  # this store never had a folder of its own: nothing to point at
                new = root.as_uri()
                connection.execute(
                    "UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?",
                    (new, experiment_id),
                )
                # The runs' URIs start with the old location (prefix compared as text: a
                # path's own % or _ would be wildcards to LIKE).
                connection.execute(
                    "UPDATE runs SET artifact_uri = ? || substr(artifact_uri, length(?) + 1)"
                    " WHERE experiment_id = ? AND substr(artifact_uri, 1, length(?)) = ?",
                    (new, location, experiment_id, location, location),
                )
                moved.append(f"experiment {name!r}: artifacts {location} -> {new}")
        return moved


def _other_store(artifacts: Path, database: Path) -> bool:
    """Whether an artifacts folder belongs to another SQLite store beside it: a store copied
    without its artifacts still names its original's, and wrote its reports and runs there."""
    return any(
        not other.samefile(database) for other in artifacts.parent.glob("*.db") if other.is_file()
    )


def check_artifact_root(location: str | None, experiment: str) -> None:
    """A local artifact folder must take a file now: otherwise the first cell trained and then
    failed to log its artifacts."""
    folder = _local_folder(location)
    if folder is None:
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        reason = "a file is in its place" if isinstance(exc, FileExistsError) else exc.strerror
        raise BenchError(
            f"artifact folder {folder} of experiment {experiment!r} cannot be written "
            f"({reason or exc}); make it a writable folder, or pass another --experiment or"
            " --tracking-uri"
        ) from None


def _local_folder(location: str | None) -> Path | None:
    if not location:
        return None
    parsed = urllib.parse.urlparse(location)
    if parsed.scheme == "file":
        return Path(urllib.parse.unquote(parsed.path))
    return Path(location) if not parsed.scheme else None  # s3://, mlflow-artifacts:/, ...


def store_retry_s() -> float:
    """How long a write waits out an unwritable store, in all (MLP_BENCH_STORE_RETRY_S)."""
    text = os.environ.get(STORE_RETRY_ENV)
    if text is None:
        return DEFAULT_STORE_RETRY_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= MAX_STORE_RETRY_S:
        raise BenchError(
            f"{STORE_RETRY_ENV}={text} is not a number of seconds from 0 to {MAX_STORE_RETRY_S:g};"
            f" unset it for the default {DEFAULT_STORE_RETRY_S:g}"
        )
    return value


class PatientClient:
    """An MlflowClient whose calls wait out a store that cannot take a write now, for up to
    `retry_s` in all, each attempt after MLflow's own 20 s wait; past that, and for every call
    after, StoreUnwritable. Each attempt holds back Ctrl-C until it is done, so that an
    interrupt never cuts a transaction half-way."""

    def __init__(self, client: Any, uri: str, retry_s: float) -> None:
        self._client = client
        self._uri = uri
        self._retry_s = retry_s
        self.gave_up: str | None = None  # why, once it has
        # A server that never answered is a wrong address, not an outage: that fails at once.
        self._answered = False

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._client, name)
        return lambda *args, **kwargs: self._call(method, *args, **kwargs)

    def _call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self.gave_up:
            raise StoreUnwritable(self.gave_up)
        start = time.monotonic()
        pause = 0.5
        while True:
            try:
                with interrupts.deferred():
                    answer = method(*args, **kwargs)
                self._answered = True
                return answer
            except Exception as exc:
                reason = unwritable_reason(str(exc), self._answered)
                if reason is None:
                    raise
                waited = time.monotonic() - start
                if waited >= self._retry_s:
                    self.gave_up = (
                        f"tracking store {self._uri} could not be written for {waited:.0f} s "
                        f"({reason}; {STORE_RETRY_ENV} sets the wait)"
                    )
                    raise StoreUnwritable(self.gave_up) from None
                time.sleep(min(pause, self._retry_s - waited))
                pause = min(2 * pause, 10.0)


def unwritable_reason(error: str, answered: bool) -> str | None:
    """Why a failed write means the store cannot take writes now (None: another failure).
    A server that answered before and now answers 5xx or not at all is down, as a locked
    SQLite file is: MLflow's client itself does not retry (MLFLOW_HTTP_REQUEST_MAX_RETRIES=0,
    see tracking._quiet_mlflow), so the outage is seen at once and waited out here."""
    found = next((words for words in _UNWRITABLE if words in error), None)
    if found is not None or not answered:
        return found
    for pattern, words in _SERVER_DOWN:
        match = pattern.search(error)
        if match:
            return "server down: " + words.format(*[code for code in match.groups() if code])
    return None


# A search for the open runs owned by processes of this host (see owner_tags).
OPEN_HERE = f"attributes.status = 'RUNNING' and tags.owner_host = '{socket.gethostname()}'"


def owner_tags() -> dict[str, str]:
    """Tags naming the process that owns an open run, so that a later invocation can tell a run
    whose process is gone (`kill -9`, a crash) from one still running."""
    return {
        "owner_host": socket.gethostname(),
        "owner_pid": str(os.getpid()),
        "owner_started": _process_start(os.getpid()) or "",
    }


def owner_gone(tags: dict[str, str]) -> bool:
    """Whether the process named by owner_tags() has ended: no such pid on this host, or the
    pid now belongs to a later process (its start time differs)."""
    if tags.get("owner_host") != socket.gethostname() or _process_start(os.getpid()) is None:
        return False  # another machine, or no /proc to ask: cannot tell
    try:
        pid = int(tags.get("owner_pid", ""))
    except ValueError:
        return False
    return _process_start(pid) != tags.get("owner_started")


def _process_start(pid: int) -> str | None:
    """A process's start time (clock ticks since boot, /proc/PID/stat field 22), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # fields from 3 on follow the command's ")"
