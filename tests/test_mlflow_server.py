"""The shared tracking server (`bench server`): MLflow on a real PostgreSQL database, artifacts
served by it; `run`, `reproduce` and `compare` through it; several invocations at once against
it and against a SQLite store; a server that refuses the credentials."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bench.core.errors import BenchError
from bench.recording import store
from bench.recording.mlflow_server import Database, users_folder
from tests.conftest import ROOT
from tests.live import (
    PATIENCE_S,
    as_a_terminal_job,
    bench,
    finish,
    statuses,
    store_runs,
    tiny_run,
    wait_until,
)
from tests.services import TEST_ROLE, free_port, need_postgres, tracking_server

# The slow tier: a real PostgreSQL-backed MLflow server.
pytestmark = pytest.mark.slow


def test_runs_reproduce_and_compare_read_and_write_through_the_server(
    shared_server: tuple[str, Path],
) -> None:
    uri, folder = shared_server
    for label in ("a", "b"):
        done = bench(*tiny_run(uri, "--experiment", "through-server", "--tag", f"side={label}")[3:])
        assert done.returncode == 0, done.stdout + done.stderr
        assert "View run" not in done.stdout  # MLflow's own links for each run, suppressed
    from mlflow.tracking import MlflowClient

    ours = MlflowClient(uri).get_experiment_by_name("through-server").experiment_id
    runs = [
        r
        for r in store_runs(uri)
        if r.data.tags.get("kind") in ("cell", "matrix") and r.info.experiment_id == ours
    ]
    cells = [r for r in runs if r.data.tags["kind"] == "cell"]
    assert len(cells) == 2 and all(r.info.status == "FINISHED" for r in runs)
    assert all(r.info.artifact_uri.startswith("mlflow-artifacts:") for r in cells)
    stored = {p.name for p in (folder / "artifacts").rglob("*") if p.is_file()}
    assert {"relu-xavier.toml", "step_losses.csv", "worker.log", "invocation.json"} <= stored
    again = bench("reproduce", cells[0].info.run_id, "--tracking-uri", uri)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "bit-identical" in again.stdout
    compared = bench("compare", "tag:side=a", "tag:side=b", "--tracking-uri", uri)
    assert compared.returncode in (0, 3), compared.stdout + compared.stderr  # pass or too few
    assert "regress" not in compared.stdout.lower().split("verdict")[-1][:40]


def _concurrently(uri: str, count: int) -> list[subprocess.CompletedProcess[str]]:
    """`count` invocations of 2 one-epoch cells each, started at once."""
    processes = [
        subprocess.Popen(
            tiny_run(uri, "--seeds", "2", "--tag", f"batch={i}"),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(count)
    ]
    finished = []
    for process in processes:
        out, err = process.communicate(timeout=PATIENCE_S)
        finished.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    return finished


@pytest.mark.parametrize("kind", ["server", "sqlite"])
def test_invocations_at_once_lose_no_run(
    kind: str, shared_server: tuple[str, Path], tmp_path: Path
) -> None:
    uri = shared_server[0] if kind == "server" else f"sqlite:///{tmp_path}/mlflow.db"
    before = {r.info.run_id for r in store_runs(uri)} if kind == "server" else set()
    done = _concurrently(uri, 3)
    for process in done:
        assert process.returncode == 0, process.stdout + process.stderr
        assert "database is locked" not in process.stdout + process.stderr
    runs = [r for r in store_runs(uri) if r.info.run_id not in before]
    parents = [r for r in runs if r.data.tags["kind"] == "matrix"]
    assert len(parents) == 3
    for parent in parents:
        cells = [
            r
            for r in runs
            if r.data.tags.get("invocation") == parent.info.run_id and r.data.tags["kind"] == "cell"
        ]
        assert sorted(r.data.tags["seed"] for r in cells) == ["0", "1"]
        assert {r.info.status for r in cells} == {"FINISHED"} == {parent.info.status}


@pytest.fixture
def new_users() -> Iterator[Callable[[], set[Path]]]:
    """The users folders that the test's servers made in results/ so far; removed after it."""
    folders = ROOT / store.RESULTS_DIR / "server-users"
    before = set(folders.glob("*"))

    def made() -> set[Path]:
        return set(folders.glob("*")) - before

    yield made
    for folder in made():
        shutil.rmtree(folder)
    with contextlib.suppress(OSError):  # still holds another server's users
        folders.rmdir()


def test_a_server_that_refuses_the_credentials_is_one_line_exit_2(
    tmp_path: Path, new_users: Callable[[], set[Path]]
) -> None:
    admin = {"MLFLOW_AUTH_ADMIN_PASSWORD": "a-long-test-password-1"}
    with tracking_server(tmp_path / "auth", "--basic-auth", env=admin) as uri:
        refused = bench(
            *tiny_run(uri)[3:],
            env={"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": "wrong"},
        )
        password = admin["MLFLOW_AUTH_ADMIN_PASSWORD"]
        allowed = bench(
            *tiny_run(uri)[3:],
            env={"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": password},
        )
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "refused the credentials (HTTP 401" in refused.stderr
    assert refused.stderr.count("\n") == 1
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    # The users are the server's own, not in the folder around its artifacts (served to all).
    assert not list(tmp_path.rglob("basic_auth.*"))
    (kept,) = new_users()
    assert (kept / "basic_auth.db").is_file()
    # Started again on those users with another admin password: MLflow would keep the stored
    # one and refuse every login with the new one; the server says so instead.
    name = kept.name.split("-", 2)[2]
    database = f"postgresql://{TEST_ROLE}:{TEST_ROLE}@127.0.0.1:5432/{name}"
    again = bench(
        *("server", "--basic-auth", "--database-uri", database, "--port", str(free_port())),
        env={"MLFLOW_AUTH_ADMIN_PASSWORD": "another-long-password-2"},
    )
    assert again.returncode == 2 and again.stderr.count("\n") == 1, again.stderr
    assert "already has another password than MLFLOW_AUTH_ADMIN_PASSWORD" in again.stderr
    assert "unset MLFLOW_AUTH_ADMIN_PASSWORD" in again.stderr and again.stdout == ""


def _assert_refused(done: subprocess.CompletedProcess[str], words: str) -> None:
    """Refused as bad input: exit 2, one line naming the problem, nothing on stdout."""
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert words in done.stderr and done.stdout == ""


@pytest.mark.parametrize(
    ("password", "words"),
    [
        ("", "set MLFLOW_AUTH_ADMIN_PASSWORD to the password of the user admin"),  # set, empty
        ("short", "has 5 characters; MLflow requires at least 12"),
        ("password1234", "the default password older MLflow releases shipped"),
    ],
    ids=["none", "short", "legacy-default"],
)
def test_basic_auth_with_a_password_mlflow_refuses_is_one_line(
    password: str, words: str, tmp_path: Path
) -> None:
    name = f"refused_{uuid.uuid4().hex[:8]}"
    database = Database.parse(f"postgresql://{TEST_ROLE}:{TEST_ROLE}@127.0.0.1:5432/{name}")
    done = bench(
        *("server", "--basic-auth", "--database-uri", database.uri, "--port", str(free_port())),
        *("--artifacts", str(tmp_path / "artifacts")),
        env={"MLFLOW_AUTH_ADMIN_PASSWORD": password},
    )
    _assert_refused(done, words)
    assert not (ROOT / users_folder(store.RESULTS_DIR, database)).exists()
    assert not (tmp_path / "artifacts").exists()  # refused before anything was made


@pytest.mark.parametrize(
    "uri", ["mysql://u:p@h/db", "postgresql://u:p@h:5432/"], ids=["not-postgres", "no-database"]
)
def test_a_database_uri_that_is_not_postgresql_is_refused(uri: str) -> None:
    with pytest.raises(BenchError, match="is not a postgresql://"):
        Database.parse(uri)
    done = bench("server", "--database-uri", uri)
    assert done.returncode == 2 and done.stderr.count("\n") == 1


def test_the_password_is_not_printed() -> None:
    database = Database.parse("postgresql://team:s3cret@db.example:5432/runs")
    assert database.redacted() == "postgresql://team:***@db.example:5432/runs"
    encoded = Database.parse("postgresql+psycopg://team:s3cr%40tPW@db.example/runs")
    assert encoded.password == "s3cr@tPW"
    assert encoded.redacted() == "postgresql+psycopg://team:***@db.example/runs"
    in_query = Database.parse("postgresql://team@db.example/runs?password=s3cret&sslmode=require")
    assert in_query.redacted() == "postgresql://team@db.example/runs?password=***&sslmode=require"
    assert (database.host, database.port, database.user, database.name) == (
        "db.example",
        5432,
        "team",
        "runs",
    )


def _session_commands(port: int) -> list[list[str]]:
    """The command lines of every process in the session of the server that listens on
    `port` (`bench server` runs in a session of its own: the server and its workers)."""

    def command(pid: str) -> list[str]:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]

    def session(pid: str) -> str:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[3]

    pids = [p.name for p in Path("/proc").iterdir() if p.name.isdigit()]
    commands, sessions = {}, {}
    for pid in pids:
        try:
            commands[pid], sessions[pid] = command(pid), session(pid)
        except (FileNotFoundError, ProcessLookupError):
            continue  # ended while being read
    server = next(pid for pid, line in commands.items() if str(port) in line and "--port" in line)
    return [line for pid, line in commands.items() if sessions[pid] == sessions[server]]


def test_the_database_password_is_on_no_command_line_nor_printed(
    shared_server: tuple[str, Path],
) -> None:
    """`ps` shows every user every process's command line; the server's environment only its
    owner can read."""
    uri, folder = shared_server
    commands = _session_commands(int(uri.rsplit(":", 1)[1]))
    assert len(commands) >= 3, commands  # the server and its workers
    secret = f":{TEST_ROLE}@"  # the test database's password, as its URI carries it
    assert all(secret not in part for line in commands for part in line), commands
    assert secret not in (folder / "server.log").read_text()


@pytest.mark.parametrize(
    ("host", "words"),
    [
        ("999.1.1.1", "--host 999.1.1.1 is not an address of this machine"),
        ("192.0.2.1", "--host 192.0.2.1 is not an address of this machine"),
        ("127.0.0.1", "is taken by another process; pass another --port N"),
    ],
    ids=["not-an-address", "not-this-machines", "taken"],
)
def test_an_address_the_server_cannot_listen_on_is_one_line_exit_2(
    host: str, words: str, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = bench(
            *("server", "--host", host, "--port", str(port)),
            *("--artifacts", str(tmp_path / "artifacts")),
        )
    _assert_refused(done, words)
    assert not (tmp_path / "artifacts").exists()


PG_BIN = Path("/usr/lib/postgresql/15/bin")


class OwnPostgres:
    """A PostgreSQL cluster of the test's own (initdb into a folder, on a free port), so that
    stopping it disturbs no other user of the machine's clusters."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.uri = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _pg_ctl(self, *args: str) -> None:
        command = [
            "runuser",
            "-u",
            "postgres",
            "--",
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.folder),
        ]
        done = subprocess.run([*command, *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1"
        self._pg_ctl("-o", options, "-l", str(self.folder / "log"), "-w", "start")

    def stop(self) -> None:
        """As the machine or the database server would die: no shutdown checkpoint."""
        self._pg_ctl("-m", "immediate", "-w", "stop")


@contextlib.contextmanager
def own_postgres() -> Iterator[OwnPostgres]:
    need_postgres()
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"no PostgreSQL 15 binaries in {PG_BIN}")
    # Outside pytest's tmp_path: its folders are closed to the postgres user.
    folder = Path(tempfile.mkdtemp(prefix="mlp-bench-pg-"))
    shutil.chown(folder, "postgres")
    initdb = ["runuser", "-u", "postgres", "--", str(PG_BIN / "initdb"), "-D", str(folder)]
    subprocess.run([*initdb, "-A", "trust", "-U", "postgres"], capture_output=True, check=True)
    postgres = OwnPostgres(folder)
    postgres.start()
    try:
        yield postgres
    finally:
        with contextlib.suppress(AssertionError):  # already stopped
            postgres.stop()
        shutil.rmtree(folder, ignore_errors=True)


def test_a_database_outage_mid_cell_keeps_the_cell_for_record_pending(tmp_path: Path) -> None:
    """The server's PostgreSQL dies while the cell trains: the server answers 503 from then
    on. The cell is kept as for a locked store, in one line, and recorded once it is back."""
    with own_postgres() as postgres, tracking_server(tmp_path, database=postgres.uri) as uri:
        env = {
            key: value
            for key, value in os.environ.items()
            # MLflow's own client retries a 5xx 7 times with a doubling backoff (minutes) unless
            # told otherwise; the harness tells it 0, so that the outage is seen in seconds and
            # waited out for MLP_BENCH_STORE_RETRY_S alone. A caller's setting would hide that.
            if key not in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")
        }
        (tmp_path / "tmp").mkdir()
        process = subprocess.Popen(
            tiny_run(uri),
            cwd=tmp_path,  # a server's unrecorded cells go to ./results/unrecorded
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={
                **env,
                "PYTHONPATH": str(ROOT),
                "TMPDIR": str(tmp_path / "tmp"),
                "MLP_BENCH_STORE_RETRY_S": "1",
            },
            preexec_fn=as_a_terminal_job,
        )
        # The cell's run exists and its worker trains (its log is in the cell's folder).
        started = lambda: any((tmp_path / "tmp").glob("mlp-bench-*/worker.log"))  # noqa: E731
        wait_until(started, process, "a training cell")
        postgres.stop()
        code, out, err = finish(process)
        assert code == 1, out + err
        assert err.count("\n") == 1, err
        line = err.strip()
        assert line.startswith("error: ") and "(server down: " in line, line
        kept = tmp_path / "results" / "unrecorded"
        assert f"record it with `mlp-bench record-pending {kept}`" in line
        [pending] = kept.glob("*/pending.json")
        assert json.loads(pending.read_text())["result"]["test_accuracy"] > 0.5

        postgres.start()
        done = bench("record-pending", str(kept))
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"into run {pending.parent.name}" in done.stdout
        ours = [r for r in store_runs(uri) if r.info.run_id == pending.parent.name]
        assert ours and ours[0].info.status == "FINISHED"
        # Every cell recorded now: the invocation ends FINISHED, with its report.
        assert statuses(uri) == {"matrix": "FINISHED", "cell": "FINISHED"}
        assert "all 1 cells recorded, FINISHED" in done.stdout
