"""Real services for the tests of the shared server and the Ray executor: an MLflow server on
a PostgreSQL database of its own (through `bench server`) and a local Ray cluster
(`ray start --head`). Each waits for its service to answer, never for a length of time.

PostgreSQL is Debian's package, which `.ci/run` installs and starts; on a machine without it
(and outside CI) these tests are skipped, and in CI its absence fails them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.live import PATIENCE_S, bench_command

TEST_ROLE = "mlp_bench_test"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def need_postgres() -> None:
    """Skip where PostgreSQL cannot be had here; in CI, fail (CI installs it)."""
    reason = None
    if shutil.which("pg_lsclusters") is None:
        reason = "PostgreSQL is not installed (apt-get install postgresql)"
    elif os.geteuid() != 0:
        reason = "making the test database needs root (runuser -u postgres)"
    if reason and os.environ.get("CI"):
        pytest.fail(f"CI must provide PostgreSQL: {reason}")
    if reason:
        pytest.skip(reason)


def need_ray() -> None:
    pytest.importorskip("ray", reason="the Ray executor's extra is not installed: .[ray]")


def _wait_http(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + PATIENCE_S
    while True:
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=5) as answer:
            if answer.status == 200:
                return
        if process.poll() is not None:
            raise AssertionError(f"the server exited ({process.returncode}): {log.read_text()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} did not answer within {PATIENCE_S:.0f} s")
        time.sleep(0.5)


def _stop(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextlib.contextmanager
def tracking_server(
    folder: Path, *args: str, env: dict[str, str] | None = None, database: str | None = None
) -> Iterator[str]:
    """`bench server` on a new PostgreSQL database of its own (or on `database`, left as it
    is), its artifacts under `folder`; yields its http:// URI; the server is stopped and the
    new database dropped on the way out."""
    need_postgres()
    folder.mkdir(parents=True, exist_ok=True)
    name = f"mlp_bench_test_{uuid.uuid4().hex[:8]}"
    database = database or f"postgresql://{TEST_ROLE}:{TEST_ROLE}@127.0.0.1:5432/{name}"
    port = free_port()
    log = folder / "server.log"
    command = bench_command(
        "server",
        "--port",
        str(port),
        "--database-uri",
        database,
        "--artifacts",
        str(folder / "artifacts"),
        "--workers",
        "2",
        *args,
    )
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
    try:
        _wait_http(f"http://127.0.0.1:{port}/health", process, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(process)
        subprocess.run(
            ["runuser", "-u", "postgres", "--", "psql", "-c", f"DROP DATABASE IF EXISTS {name}"],
            capture_output=True,
        )


@contextlib.contextmanager
def ray_cluster(cpus: int = 2) -> Iterator[str]:
    """A real local Ray cluster (`ray start --head --num-cpus N`, as `ray.init(num_cpus=N)`
    makes one); yields its address for --ray-address; `ray stop` on the way out."""
    need_ray()
    port = free_port()
    ray = [sys.executable, "-m", "ray.scripts.scripts"]
    started = subprocess.run(
        [
            *ray,
            "start",
            "--head",
            f"--port={port}",
            f"--num-cpus={cpus}",
            "--num-gpus=0",
            "--include-dashboard=false",
            "--disable-usage-stats",
        ],
        capture_output=True,
        text=True,
        timeout=PATIENCE_S,
    )
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([*ray, "stop", "--force"], capture_output=True, timeout=PATIENCE_S)
