"""The MLflow UI as the comparison surface: the URLs a command prints, opened in a real browser
(Debian's chromium driven by Playwright) against `mlflow ui` on a store a real run made."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from backends import installed_backends
from bench.recording import links, views
from tests.conftest import ROOT
from tests.live import PATIENCE_S, bench_command

SCREENSHOTS = ROOT / "results" / "screenshots"


def test_the_cells_url_opens_the_runs_view_filtered_to_one_invocation() -> None:
    url = links.cells_url("sqlite:///x/mlflow.db", "7", "abc123")
    base, fragment = url.split("#", 1)
    assert base == "http://127.0.0.1:5000/"
    path, query = fragment.split("?", 1)
    assert path == "/experiments/7/runs"  # the runs view, not the GenAI overview
    search = parse_qs(query)
    assert search["searchFilter"] == ["tags.invocation = 'abc123' and tags.kind = 'cell'"]
    assert search["startTime"] == ["ALL"] and search["lifecycleFilter"] == ["Active"]
    assert links.cells_url("http://team:5000/", "7").startswith("http://team:5000/#/experiments/7/")


def test_the_ui_command_is_this_environments_mlflow() -> None:
    command = links.ui_command("sqlite:///results/mlflow.db")
    executable = command.split()[0]
    assert Path(executable).parent == Path(sys.executable).parent or executable == "mlflow"
    assert "--backend-store-uri sqlite:///results/mlflow.db" in command
    assert links.ui_command("http://team:5000") == ""  # a server is its own UI
    lines = links.closing_lines("sqlite:///r/mlflow.db", "3", "p1")
    assert lines[0] == "recorded as parent run p1" and lines[1].startswith("browse with: ")
    assert lines[3] == "  its report: http://127.0.0.1:5000/#/experiments/3/runs/p1"
    assert (
        links.run_url("http://host:8080/", "3", "p1") == "http://host:8080/#/experiments/3/runs/p1"
    )


# The comparison at a glance: what the printed view's table shows.
COLUMNS = (
    "backend",
    "stage",
    "outcome",
    "test_accuracy",
    "tutorial_test_accuracy",
    "train_samples_per_s",
)


# Shown by default, of no use here, and wide: they push the metrics out of view.
DEFAULT_COLUMNS = ("Dataset", "Source", "Models")


def _browser() -> str:
    """Debian's chromium: CI installs it (.ci/run); elsewhere the test is skipped."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None or not _has_playwright():
        if os.environ.get("CI"):
            pytest.fail("CI must install chromium and playwright (.ci/run, the test group)")
        pytest.skip("no chromium or playwright here (.ci/run installs them)")
    return found


def _has_playwright() -> bool:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return False
    return True


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for_port(server: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + PATIENCE_S
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert server.poll() is None, "the UI exited"
            assert time.monotonic() < deadline, "the UI did not start"
            time.sleep(0.5)


@pytest.fixture(scope="module")
def recorded_run(
    every_backend_run: tuple[str, Path, subprocess.CompletedProcess[str]],
) -> tuple[str, list[str]]:
    """A real run of every installed backend on relu-xavier (2 epochs: the second gives
    samples/s; conftest's, shared with the report tests) and its closing lines."""
    uri, _, done = every_backend_run
    lines = done.stdout.splitlines()
    return uri, lines[lines.index(next(x for x in lines if x.startswith("recorded as"))) :]


@pytest.fixture(scope="module")
def served(recorded_run: tuple[str, list[str]]) -> Iterator[tuple[int, list[str]]]:
    """The printed `mlflow ui` command, on a free port, until the tests are done."""
    _, lines = recorded_run
    command = lines[1].removeprefix("browse with: ").split()
    port = _free_port()
    command[command.index("--port") + 1] = str(port)
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_port(server, port)
        yield port, lines
    finally:
        server.terminate()
        server.wait(timeout=60)


def _headers(page: Any) -> list[str]:
    """The runs table's column names, left to right, as its grid lays them out."""
    ids = page.eval_on_selector_all(
        ".ag-header-cell[col-id]", "cells => cells.map(cell => cell.getAttribute('col-id'))"
    )
    return [re.sub(r"^\w+\.`(.*)`$", r"\1", str(key)) for key in ids]


@pytest.mark.slow  # a real browser on a real run of every backend
def test_the_printed_urls_show_the_cells_and_the_parents_report(
    served: tuple[int, list[str]],
) -> None:
    """The printed link opens, in a fresh browser, the finished comparison with no click: the
    cells (every one), the columns in order, not the UI's default ones, only their charts."""
    executable = _browser()
    from playwright.sync_api import sync_playwright

    port, lines = served
    view_url = lines[2].split(": ", 1)[1].replace(":5000/", f":{port}/")
    parent_url = lines[3].split(": ", 1)[1].replace(":5000/", f":{port}/")
    assert "viewStateShareKey=" in urlsplit(view_url).fragment
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    timeout_ms = PATIENCE_S * 1000  # the first load: the server may answer slowly when busy
    cells = len(installed_backends())
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 2400, "height": 1000})  # a fresh profile
            page.goto(view_url)
            for backend in installed_backends():  # every cell, named backend first
                page.get_by_text(f"{backend} relu-xavier cpu s0").first.wait_for(timeout=timeout_ms)
            page.get_by_test_id("sort-header-train_samples_per_s").wait_for(timeout=timeout_ms)
            body = page.inner_text("body")
            assert "run relu-xavier" not in body  # the filter keeps the parent out
            assert f"{cells} matching run" in body
            assert views.NOTE_OPENING in body  # the experiment's description
            headers = _headers(page)
            # All of them; their order (tags first) the UI applies only once its grid has them
            # all, which a loaded machine showed it may not wait for.
            assert set(COLUMNS) <= set(headers), headers
            assert not set(DEFAULT_COLUMNS) & set(headers), headers
            # Opened as model training (its side bar), not on GenAI's overview of traces.
            assert "Model registry" in body and "Evaluation runs" not in body
            page.screenshot(path=str(SCREENSHOTS / "cells.png"), full_page=True)
            charts = browser.new_page(viewport={"width": 2400, "height": 1000})
            charts.goto(view_url + "&compareRunsMode=CHART")  # the same view, as charts
            charts.get_by_text("Comparison", exact=True).wait_for(timeout=timeout_ms)
            # One section of the three metrics, not a chart per logged metric (39, canary first).
            assert "Comparison\n(3)" in charts.inner_text("body")
            charts.screenshot(path=str(SCREENSHOTS / "charts.png"), full_page=True)
            page.goto(parent_url)
            page.get_by_text("relu-xavier", exact=False).first.wait_for(timeout=timeout_ms)
            page.get_by_text("Tutorial", exact=False).first.wait_for(timeout=timeout_ms)
            page.screenshot(path=str(SCREENSHOTS / "parent.png"), full_page=True)
        finally:
            browser.close()


@pytest.mark.slow  # a real run of every backend
def test_the_run_saves_its_view_the_description_and_each_backends_colour(
    recorded_run: tuple[str, list[str]], tmp_path: Path
) -> None:
    from mlflow.tracking import MlflowClient

    from bench.recording.reader import Reader

    uri, lines = recorded_run
    parent = lines[0].removeprefix("recorded as parent run ").strip()
    copy = tmp_path / "mlflow.db"  # a copy: the served store stays as the run left it
    shutil.copy(uri.removeprefix("sqlite:///"), copy)
    client = MlflowClient(f"sqlite:///{copy}")
    experiment = client.get_experiment_by_name("mnist-tutorial").experiment_id
    assert views.VIEW_TAG_PREFIX + parent in client.get_experiment(experiment).tags
    reader = Reader(client, f"sqlite:///{copy}")
    assert views.latest(reader, experiment) == parent  # what `bench ui` prints
    cells = client.search_runs([experiment], f"tags.invocation = '{parent}'")
    colors = {run.data.tags["backend"]: run.data.tags.get(views.RUN_COLOR_TAG) for run in cells}
    assert colors == {backend: views.run_color(backend) for backend in installed_backends()}
    assert len(set(colors.values())) == len(colors)  # no two backends alike
    client.set_experiment_tag(experiment, views.NOTE_TAG, "the team's own words")
    views.save(client, experiment, parent)  # the next invocation's
    assert client.get_experiment(experiment).tags[views.NOTE_TAG] == "the team's own words"


@pytest.mark.slow  # a real run of every backend
def test_bench_ui_serves_a_copied_store_with_its_artifacts(
    recorded_run: tuple[str, list[str]], tmp_path: Path
) -> None:
    """results/ copied to another place (as to another machine): `bench ui` points the copy at
    its own artifacts and serves them; the parent's report.html comes back over HTTP."""
    import urllib.request

    uri, lines = recorded_run
    parent = lines[0].removeprefix("recorded as parent run ").strip()
    copy = tmp_path / "elsewhere"
    shutil.copytree(Path(uri.removeprefix("sqlite:///")).parent, copy)
    port = _free_port()
    log = tmp_path / "ui.log"
    command = bench_command("ui", "--tracking-uri", f"sqlite:///{copy}/mlflow.db")
    with log.open("wb") as out:  # a file, not a pipe: the server's workers inherit it
        server = subprocess.Popen([*command, "--port", str(port)], cwd=ROOT, stdout=out, stderr=out)
    try:
        _wait_for_port(server, port)
        url = f"http://127.0.0.1:{port}/get-artifact?path=report.html&run_uuid={parent}"
        with urllib.request.urlopen(url, timeout=PATIENCE_S) as answer:
            assert answer.status == 200
            assert "<!DOCTYPE html>" in answer.read().decode()
    finally:
        server.terminate()
        server.wait(timeout=60)
    output = log.read_text()
    assert "store moved: experiment 'mnist-tutorial'" in output
    assert f":{port}/#/experiments/" in output  # the view's URL, on the port asked for
    assert f"viewStateShareKey={parent}" in output  # the newest invocation's


@pytest.mark.parametrize(
    ("uri", "words"),
    [
        ("http://team:5000", "is a server"),
        ("http://team:s3cret@team:5000", "http://team:***@team:5000 is a server"),
        ("sqlite:////nonexistent/mlflow.db", "no store at"),
    ],
)
def test_bench_ui_refuses_what_it_cannot_serve(uri: str, words: str) -> None:
    done = subprocess.run(
        bench_command("ui", "--tracking-uri", uri),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=PATIENCE_S,
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert words in done.stderr and "s3cret" not in done.stderr


def _ui_on(store: Path, port: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        bench_command("ui", "--tracking-uri", f"sqlite:///{store}", f"--port={port}"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=PATIENCE_S,
    )


@pytest.mark.parametrize("port", ["99999", "-1"])
def test_bench_ui_refuses_a_port_out_of_range_before_anything_starts(
    port: str, tmp_path: Path
) -> None:
    store = tmp_path / "mlflow.db"
    store.touch()  # an empty SQLite database: a store once MLflow has made its tables
    done = _ui_on(store, port)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "is outside 1..65535" in done.stderr and done.stdout == ""
    assert store.stat().st_size == 0  # untouched


def test_bench_ui_on_a_taken_port_names_it_and_prints_no_url(tmp_path: Path) -> None:
    """The URLs would open the UI of whatever holds the port."""
    store = tmp_path / "mlflow.db"
    store.touch()
    with socket.socket() as taken:
        taken.bind((links.UI_HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _ui_on(store, str(port))
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert f"port {port} on {links.UI_HOST} is taken" in done.stderr
    assert "pass another --port N" in done.stderr
    assert done.stdout == "" and store.stat().st_size == 0
