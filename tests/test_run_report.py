"""The report every invocation leaves (bench.recording.run_report): real short runs recorded into a
temporary SQLite store, read back through MLflow as the UI would."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from backends import installed_backends
from bench.recording.links import run_url, view_url
from bench.recording.run_report import default_report_dir
from tests.conftest import mnist_dir
from tests.live import bench, tiny_run, two_epoch_run


def client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def all_runs(uri: str) -> list[Any]:
    store = client(uri)
    return list(store.search_runs([e.experiment_id for e in store.search_experiments()]))


@dataclass(frozen=True)
class Recorded:
    uri: str
    folder: Path
    done: subprocess.CompletedProcess[str]
    parent: Any
    cells: list[Any]


def record_run(folder: Path, *args: str) -> Recorded:
    """A real two-epoch `bench run` on every installed backend (live.two_epoch_run), into its
    own store under `folder`."""
    uri = f"sqlite:///{folder}/mlflow.db"
    return _read_back(uri, folder, bench(*two_epoch_run(uri, *args)[3:]))


def _read_back(uri: str, folder: Path, done: subprocess.CompletedProcess[str]) -> Recorded:
    """The finished run's parent and cells, read back from its store."""
    runs = all_runs(uri)
    [parent] = [r for r in runs if r.data.tags.get("kind") == "matrix"]
    cells = [r for r in runs if r.data.tags.get("kind") == "cell"]
    return Recorded(uri, folder, done, parent, cells)


@pytest.fixture(scope="module")
def recorded(every_backend_run: tuple[str, Path, subprocess.CompletedProcess[str]]) -> Recorded:
    """One real invocation shared by the tests below (and test_ui's): one cell per installed
    backend. A test changes only a copy of it; `bench report` records the same report again."""
    return _read_back(*every_backend_run)


@pytest.mark.slow
def test_run_prints_where_the_report_is(recorded: Recorded) -> None:
    assert recorded.done.returncode == 0, recorded.done.stdout + recorded.done.stderr
    page = default_report_dir(recorded.uri, recorded.parent.info.run_id) / "report.html"
    assert f"report: {page} (" in recorded.done.stdout
    assert page.is_file()
    # Beside the store, so that reports travel with it.
    assert page.parent.parent.parent == recorded.folder
    assert "WARNING: the report" not in recorded.done.stdout


@pytest.mark.slow
def test_parent_run_has_the_description(recorded: Recorded) -> None:
    parent = recorded.parent
    note = parent.data.tags["mlflow.note.content"]
    assert "| stage | backend | device | seed | outcome | test acc |" in note
    for cell in recorded.cells:
        accuracy = f"{100 * cell.data.metrics['test_accuracy']:.2f}%"
        assert re.search(
            rf"\| relu-xavier \| {cell.data.tags['backend']} \| cpu \| 0 \| "
            rf"converged \| {re.escape(accuracy)} \| 98\.02% \|",
            note,
        ), note
    # The page this description is on links to its cells' saved view, not to itself.
    url = view_url(recorded.uri, parent.info.experiment_id, parent.info.run_id)
    assert f"[Its cells side by side in the MLflow UI]({url})" in note
    assert run_url(recorded.uri, parent.info.experiment_id, parent.info.run_id) not in note
    assert parent.data.tags["git_commit"] in note
    assert "--stage relu-xavier --epochs 2" in note  # the command line
    assert "cores available" in note  # the machine


@pytest.mark.slow
def test_parent_run_has_table_figures_and_html(recorded: Recorded) -> None:
    store = client(recorded.uri)
    run_id = recorded.parent.info.run_id
    artifacts = {a.path for a in store.list_artifacts(run_id)}
    assert {"cells.json", "report.html", "figures"} <= artifacts
    assert [a.path for a in store.list_artifacts(run_id, "figures")] == ["figures/relu-xavier.png"]
    # What the UI's table view looks for (MlflowClient.load_table would search the default
    # store, not this client's: MLflow 3.17 calls the fluent mlflow.search_runs).
    logged = json.loads(recorded.parent.data.tags["mlflow.loggedArtifacts"])
    assert {"path": "cells.json", "type": "table"} in logged
    with tempfile.TemporaryDirectory() as tmp:
        saved = json.loads(Path(store.download_artifacts(run_id, "cells.json", tmp)).read_text())
    rows = [dict(zip(saved["columns"], values, strict=True)) for values in saved["data"]]
    assert sorted(row["backend"] for row in rows) == sorted(installed_backends())
    assert {(row["stage"], row["outcome"], row["tutorial"]) for row in rows} == {
        ("relu-xavier", "converged", "98.02%")
    }
    by_backend = {c.data.tags["backend"]: c for c in recorded.cells}
    for row in rows:
        metrics = by_backend[row["backend"]].data.metrics
        assert row["test_accuracy"] == pytest.approx(metrics["test_accuracy"], rel=1e-9)
        assert row["samples_per_s"] == pytest.approx(metrics["train_samples_per_s"], rel=1e-9)
        assert row["samples_per_s_p25"] <= row["samples_per_s_p75"]


@pytest.mark.slow
def test_report_html_embeds_images_and_every_row(recorded: Recorded) -> None:
    page = default_report_dir(recorded.uri, recorded.parent.info.run_id) / "report.html"
    text = page.read_text()
    assert "<img" in text and "data:image/png;base64," in text
    assert 'src="http' not in text and "src='http" not in text  # self-contained
    for cell in recorded.cells:
        accuracy = f"{100 * cell.data.metrics['test_accuracy']:.2f}%"
        row = f"<td>{cell.data.tags['backend']}</td><td>cpu</td><td>0</td><td>converged</td>"
        assert f"{row}<td>{accuracy}</td>" in text


@pytest.mark.slow
def test_cells_name_the_mnist_split_as_dataset_inputs(recorded: Recorded) -> None:
    for cell in recorded.cells:
        run = client(recorded.uri).get_run(cell.info.run_id)
        inputs = run.inputs.dataset_inputs
        contexts = {tag.value for i in inputs for tag in i.tags if tag.key == "mlflow.data.context"}
        assert contexts == {"train", "validation", "test"}
        digest = run.data.params["env.data_sha256"][:16]
        assert {i.dataset.digest for i in inputs} == {digest}
        rows = {i.dataset.name: json.loads(i.dataset.profile)["num_rows"] for i in inputs}
        assert rows == {"mnist-train": 55_000, "mnist-validation": 5_000, "mnist-test": 10_000}
        assert {i.dataset.source for i in inputs} == {str(mnist_dir())}


@pytest.mark.slow
def test_report_command_regenerates_it(recorded: Recorded, tmp_path: Path) -> None:
    run_id = recorded.parent.info.run_id
    out = tmp_path / "again"
    # The shared store: the same report recorded again on its parent (a copy would print
    # "store moved" first).
    done = bench("report", run_id, "--out", str(out), "--tracking-uri", recorded.uri)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == f"report of run {run_id}: {out / 'report.html'}"
    text = (out / "report.html").read_text()
    assert text.count("data:image/png;base64,") == 1  # the one stage's figure
    assert (out / "figures" / "relu-xavier.png").read_bytes().startswith(b"\x89PNG")
    columns = json.loads((out / "cells.json").read_text())
    assert sorted(columns["backend"]) == sorted(installed_backends())
    assert (out / "description.md").read_text().startswith("| stage |")


def _artifact_roots(database: Path) -> set[str]:
    with sqlite3.connect(database) as connection:
        return {
            uri.split("/artifacts/")[0] + "/artifacts"
            for (uri,) in connection.execute("SELECT artifact_uri FROM runs")
        }


@pytest.mark.parametrize("how", ["moved", "copied"])
@pytest.mark.slow
def test_a_moved_or_copied_store_reads_and_writes_its_own_artifacts(
    recorded: Recorded, tmp_path: Path, how: str
) -> None:
    """results/ copied to another machine (or beside itself): MLflow recorded absolute
    artifact paths, so the copy is pointed at its own artifacts folder when a bench command
    opens it, and the original is left as it was."""
    source = tmp_path / "source"
    shutil.copytree(recorded.folder, source)  # a store of its own, as a run left it
    bench("report", recorded.parent.info.run_id, "--tracking-uri", f"sqlite:///{source}/mlflow.db")
    assert _artifact_roots(source / "mlflow.db") == {(source / "artifacts").as_uri()}
    target = tmp_path / "elsewhere" / "results"
    target.parent.mkdir()
    if how == "moved":
        source.rename(target)
    else:
        shutil.copytree(source, target)
    uri = f"sqlite:///{target}/mlflow.db"
    run_id = recorded.parent.info.run_id
    done = bench("report", run_id, "--tracking-uri", uri)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"store moved: experiment 'mnist-tutorial': artifacts {source.as_uri()}/artifacts" in (
        done.stdout
    )
    assert _artifact_roots(target / "mlflow.db") == {(target / "artifacts").as_uri()}
    names = {a.path for a in client(uri).list_artifacts(recorded.cells[0].info.run_id)}
    assert "step_losses.csv" in names  # read from the copy's own folder
    if how == "copied":  # the original still points at its own
        assert _artifact_roots(source / "mlflow.db") == {(source / "artifacts").as_uri()}
    again = bench("report", run_id, "--tracking-uri", uri)
    assert "store moved" not in again.stdout  # once only


@pytest.mark.parametrize("which", ["unknown", "cell"])
@pytest.mark.slow
def test_report_refuses_what_is_not_a_parent_run(
    recorded: Recorded, tmp_path: Path, which: str
) -> None:
    run_id = "0" * 32 if which == "unknown" else recorded.cells[0].info.run_id
    before = len(all_runs(recorded.uri))
    out = tmp_path / "out"
    done = bench("report", run_id, "--out", str(out), "--tracking-uri", recorded.uri)
    assert done.returncode == 2
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    expected = "no run" if which == "unknown" else "is not an invocation's parent run"
    assert line.startswith("error: ") and expected in line and run_id in line
    assert not out.exists() and len(all_runs(recorded.uri)) == before


@pytest.mark.slow
def test_a_report_that_fails_does_not_lose_the_run(tmp_path: Path) -> None:
    """Its folder cannot be made (a file is in the way): one WARNING line, the run is kept."""
    (tmp_path / "reports").write_text("in the way\n")
    run = record_run(tmp_path, "--backend", installed_backends()[-1])
    assert run.done.returncode == 0, run.done.stdout + run.done.stderr
    [warning] = [line for line in run.done.stdout.splitlines() if "WARNING: the report" in line]
    assert f"mlp-bench report {run.parent.info.run_id}" in warning
    assert run.parent.info.status == "FINISHED"
    assert [c.info.status for c in run.cells] == ["FINISHED"]


@pytest.mark.skipif(len(installed_backends()) < 2, reason="parity needs both backends")
@pytest.mark.skipif(len(installed_backends()) < 2, reason="parity needs two backends")
@pytest.mark.slow
def test_parity_run_gets_a_report_with_its_curve(tmp_path: Path) -> None:
    """One pair (the first two backends): one parity run, whose report this checks."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    pair = [arg for name in installed_backends()[:2] for arg in ("--backend", name)]
    done = bench(
        "parity",
        "--stage",
        "relu-xavier",
        "--steps",
        "5",
        *pair,
        "--tracking-uri",
        uri,
        "--data-dir",
        str(mnist_dir()),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    [run] = all_runs(uri)
    note = run.data.tags["mlflow.note.content"]
    assert note.startswith("**parity** `parity-") and "parity passed" in note
    assert "--stage relu-xavier --steps 5 --backend" in note
    page = default_report_dir(uri, run.info.run_id) / "report.html"
    assert "<h2>parity curve</h2><img" in page.read_text()
    assert "report.html" in {a.path for a in client(uri).list_artifacts(run.info.run_id)}


@pytest.mark.slow
def test_a_store_copied_without_its_artifacts_writes_into_its_own(
    recorded: Recorded, tmp_path: Path
) -> None:
    """Only mlflow.db copied: its runs still name the original's artifacts folder, which is
    there. The copy is pointed at a folder of its own, and the original's is left as it was."""
    original = recorded.folder / "artifacts"
    before = {path: path.stat().st_mtime_ns for path in original.rglob("*")}
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(recorded.folder / "mlflow.db", copy / "mlflow.db")
    done = bench(
        "report", recorded.parent.info.run_id, "--tracking-uri", f"sqlite:///{copy}/mlflow.db"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"store moved: experiment 'mnist-tutorial': artifacts {original.as_uri()}" in done.stdout
    assert _artifact_roots(copy / "mlflow.db") == {(copy / "artifacts").as_uri()}
    assert {p.name for p in (copy / "artifacts").rglob("*")} >= {"report.html", "cells.json"}
    assert {path: path.stat().st_mtime_ns for path in original.rglob("*")} == before


def _copied_store(recorded: Recorded, folder: Path) -> str:
    """A copy of the shared store (with its artifacts), to change without changing it."""
    shutil.copytree(recorded.folder, folder)
    return f"sqlite:///{folder}/mlflow.db"


@pytest.mark.parametrize("deleted", ["parent", "cells"])
@pytest.mark.slow
def test_report_of_deleted_runs_is_one_line_and_changes_nothing(
    recorded: Recorded, tmp_path: Path, deleted: str
) -> None:
    """A parent run deleted in the UI; or its cells, whose report would have replaced the
    description with an empty table."""
    uri = _copied_store(recorded, tmp_path / "store")
    run_id = recorded.parent.info.run_id
    note = client(uri).get_run(run_id).data.tags["mlflow.note.content"]
    gone = [run_id] if deleted == "parent" else [c.info.run_id for c in recorded.cells]
    for each in gone:
        client(uri).delete_run(each)
    out = tmp_path / "out"
    done = bench("report", run_id, "--out", str(out), "--tracking-uri", uri)
    assert done.returncode == 2, done.stdout + done.stderr
    [line] = done.stderr.splitlines()
    expected = (
        f"is deleted; restore it with `MLFLOW_TRACKING_URI={uri} mlflow runs restore --run-id"
        f" {run_id}`"
        if deleted == "parent"
        else "has no cells left"
    )
    assert line.startswith(f"error: run {run_id} ") and expected in line, line
    assert not out.exists()
    assert client(uri).get_run(run_id).data.tags["mlflow.note.content"] == note


# Text a stage file may hold that MLflow's description renderer would take as markup: it keeps
# <img> (with its handlers) and <iframe>.
_MARKUP = "<img src=x onerror=alert(1)> <iframe src=//example.com></iframe> [go](javascript:x)"


@dataclass(frozen=True)
class Served:
    uri: str  # the server's address, without credentials
    artifacts: Path
    done: subprocess.CompletedProcess[str]
    report: Path
    runs: list[Any]


@pytest.fixture(scope="module")
def served(
    shared_server: tuple[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """One run through the shared server with a password in its --tracking-uri (percent-
    encoded '@'), of a stage whose description and deviations are HTML."""
    from bench.core.spec import STAGES_DIR

    uri, folder = shared_server
    stages = tmp_path_factory.mktemp("stages")
    text = (STAGES_DIR / "relu-xavier.toml").read_text()
    text = re.sub(r'(?m)^description = ".*"$', f'description = "{_MARKUP}"', text)
    text = text.replace('tutorial_deviations = """', f'tutorial_deviations = """{_MARKUP} ')
    (stages / "relu-xavier.toml").write_text(text)
    with_password = uri.replace("http://", "http://user:s3cr%40tPW@")
    command = tiny_run(with_password, "--experiment", "credentials")[3:]
    done = bench(*command, env={"MLP_BENCH_STAGES_DIR": str(stages)})
    assert done.returncode == 0, done.stdout + done.stderr
    [report] = re.findall(r"^report: (.*) \(", done.stdout, re.MULTILINE)
    ours = client(uri).get_experiment_by_name("credentials").experiment_id
    runs = [r for r in all_runs(uri) if r.info.experiment_id == ours]
    yield Served(uri, folder / "artifacts", done, Path(report), runs)
    shutil.rmtree(Path(report).parent)  # results/reports/<run id> of this checkout


@pytest.mark.slow
def test_a_tracking_uris_password_is_never_recorded_or_printed(served: Served) -> None:
    secrets = ("s3cr%40tPW", "s3cr@tPW")
    printed = served.done.stdout + served.done.stderr
    assert "user:***@127.0.0.1" in printed
    recorded = [
        printed,
        served.report.read_text(),
        (served.report.parent / "description.md").read_text(),
    ]
    for run in served.runs:
        recorded += [*run.data.params.values(), *run.data.tags.values()]
    recorded += [
        p.read_text()
        for p in served.artifacts.rglob("*")
        if p.suffix in (".json", ".md", ".html", ".txt", ".log")
    ]
    assert not [text for text in recorded if any(secret in text for secret in secrets)]
    [parent] = [r for r in served.runs if r.data.tags.get("kind") == "matrix"]
    assert "--tracking-uri http://user:***@127.0.0.1:" in parent.data.params["command"]
    assert (
        f"store: `{served.uri.replace('http://', 'http://user:***@')}`"
        in parent.data.tags["mlflow.note.content"]
    )


@pytest.mark.slow
def test_stage_text_is_shown_not_rendered_in_descriptions(served: Served) -> None:
    [cell] = [r for r in served.runs if r.data.tags.get("kind") == "cell"]
    note = cell.data.tags["mlflow.note.content"]
    assert "<img" not in note and "<iframe" not in note
    assert note.count("&lt;img src=x onerror=alert(1)&gt;") == 2  # description and deviations
    assert "\\[go\\](javascript:x)" in note


# ---- the results at a glance, and a report that reads as it is meant to -------------------


def _in_order(recorded: Recorded) -> list[Any]:
    """The cells as they ran: the order of the table's columns."""
    return sorted(recorded.cells, key=lambda run: run.info.start_time)


def _backends_in_order(recorded: Recorded) -> list[str]:
    return [cell.data.tags["backend"] for cell in _in_order(recorded)]


def _glance_entry(cell: Any) -> str:
    metrics = cell.data.metrics
    return f"{100 * metrics['test_accuracy']:.2f}% (n=1), {metrics['train_samples_per_s']:,.0f}/s"


@pytest.mark.slow
def test_the_results_at_a_glance_come_first_everywhere(recorded: Recorded) -> None:
    """Stage x backend, test accuracy and samples/s: first in the closing lines, the parent's
    description and report.html."""
    backends = _backends_in_order(recorded)
    lines = recorded.done.stdout.splitlines()
    [glance] = [i for i, line in enumerate(lines) if line.split() == ["stage", *backends]]
    [cells] = [i for i, line in enumerate(lines) if line.split()[:2] == ["stage", "backend"]]
    assert glance < cells and lines[glance - 1] == ""  # the first of the closing tables
    note = recorded.parent.data.tags["mlflow.note.content"]
    assert note.startswith(f"| stage | {' | '.join(backends)} |\n")
    entries = [_glance_entry(cell) for cell in _in_order(recorded)]
    row = "relu-xavier " + " ".join(entries)
    assert " ".join(lines[glance + 2].split()) == " ".join(row.split())
    assert f"| relu-xavier | {' | '.join(entries)} |" in note
    page = default_report_dir(recorded.uri, recorded.parent.info.run_id) / "report.html"
    assert re.search(r"<body><h1>[^<]*</h1><table class=\"glance\">", page.read_text())


@pytest.mark.slow
def test_the_description_says_which_cells_diverged_or_timed_badly(
    recorded: Recorded, tmp_path: Path
) -> None:
    """In words MLflow's Markdown keeps: "diverged at step 28" ("@step" links to a GitHub
    user), and the cells whose speed is suspect, with why."""
    uri = _copied_store(recorded, tmp_path / "store")
    run_id = recorded.parent.info.run_id
    cells = _in_order(recorded)
    first, last = cells[0], cells[-1]
    store = client(uri)
    store.set_tag(first.info.run_id, "outcome", "diverged")
    store.log_metric(first.info.run_id, "diverged_step", 28)
    store.set_tag(last.info.run_id, "speed_stable", "false")
    reason = "canary +8483%; other processes used 1.39 cores"
    store.set_tag(last.info.run_id, "speed_unstable_reason", reason)
    store.set_tag(run_id, "speed_stable", "false")
    store.set_tag(first.info.run_id, "canary_unreliable", "canary unreliable: 85x")
    from bench.recording.run_report import make_report
    from bench.recording.tracking import Tracker

    out = tmp_path / "out"  # in this process: `report`'s own start-up would double the time
    make_report(Tracker(uri, experiment=None), run_id, out)
    note = store.get_run(run_id).data.tags["mlflow.note.content"]
    assert note == (out / "description.md").read_text()
    assert "@" not in note and "diverged at step 28" in note
    # The table shows what happened to the cell, not its accuracy.
    assert "| relu-xavier | diverged at step 28 |" in note
    named = f"{last.data.tags['backend']} relu-xavier cpu (canary +8483%, other processes used"
    assert "**speed NOT stable**, timings suspect (" in note and f"{named} 1.39 cores)" in note
    assert f"**matrix** `{recorded.parent.info.run_name}` (FINISHED)" in note  # no "run run"
    backend = first.data.tags["backend"]
    assert f"load canary failed on {backend} relu-xavier cpu (canary unreliable: 85x)" in note
    # The link goes to the invocation's saved view, which the report saved first.
    assert f"viewStateShareKey={run_id}" in note
    assert f"mlflow.sharedViewState.{run_id}" in store.get_experiment(first.info.experiment_id).tags


def _invocation(uri: str, run_id: str) -> Any:
    from bench.recording.tracking import Tracker

    return Tracker(uri, experiment=None).reader.invocation(run_id)


def _speed_panel(figure: Any) -> Any:
    [panel] = [ax for ax in figure.axes if ax.get_title().startswith("throughput")]
    return panel


@pytest.mark.slow
def test_figures_name_every_backend_in_its_colour_with_readable_throughput(
    recorded: Recorded,
) -> None:
    from matplotlib.colors import to_hex

    from bench.recording.figures import BACKEND_COLORS, BACKEND_NAMES, stage_figure

    invocation = _invocation(recorded.uri, recorded.parent.info.run_id)
    figure = stage_figure(invocation, "relu-xavier")
    title = figure.get_suptitle()
    assert all(BACKEND_NAMES[b] in title for b in installed_backends()), title
    assert "TensorFlow vs PyTorch (" not in title or len(installed_backends()) == 2
    speed = _speed_panel(figure)
    assert speed.get_yscale() == "linear" and speed.get_legend() is None  # nothing hides a bar
    written = {text.get_text() for text in speed.texts}
    bars = {to_hex(bar.get_facecolor()): bar for bar in speed.patches}
    for cell in invocation.cells:
        value = cell.metrics["train_samples_per_s"]
        assert f"{value:,.0f}" in written  # the value, on its bar
        bar = bars[BACKEND_COLORS[cell.backend].lower()]  # one colour per backend
        assert bar.get_height() == pytest.approx(value)
    labels = [label for ax in figure.axes for label in ax.get_legend_handles_labels()[1]]
    assert not [label for label in labels if "mean of 1 seed" in label]
    assert any("(seed 0)" in label for label in labels)


@pytest.mark.slow
def test_the_roofline_never_strikes_through_the_note_that_nothing_was_timed(
    recorded: Recorded,
) -> None:
    """Cells without samples/s but with a peak: the roof is written at the top, not drawn
    across the middle where the note says why no bar is there."""
    from dataclasses import replace

    from bench.recording.figures import stage_figure

    invocation = _invocation(recorded.uri, recorded.parent.info.run_id)
    untimed = [
        replace(
            cell,
            metrics={
                **{k: v for k, v in cell.metrics.items() if "samples_per_s" not in k},
                "machine_peak_gflops": 100.0,
                "flops_per_sample": 1e5,
            },
        )
        for cell in invocation.cells
    ]
    speed = _speed_panel(stage_figure(replace(invocation, cells=untimed), "relu-xavier"))
    assert not speed.lines  # no roofline drawn
    texts = {text.get_text(): text.get_position() for text in speed.texts}
    assert texts["roofline cpu: 1,000,000/s"][1] > 0.9
    [(_, middle)] = [pos for text, pos in texts.items() if text.startswith("no samples/s")]
    assert middle == 0.5


@pytest.mark.slow  # a real browser
def test_report_html_reads_in_a_browser_as_mailed(recorded: Recorded, tmp_path: Path) -> None:
    """Opened from a file, as a mailed copy is: the table at a glance first, no Markdown marks,
    no raw copy of the description, headings that say what they show, and the UI's link
    saying what it needs."""
    from playwright.sync_api import sync_playwright

    from tests.test_ui import SCREENSHOTS, _browser

    executable = _browser()
    page_file = default_report_dir(recorded.uri, recorded.parent.info.run_id) / "report.html"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(page_file.as_uri())
            first = page.locator("body > :nth-child(2)")
            assert first.evaluate("e => e.tagName + '.' + e.className") == "TABLE.glance"
            assert first.locator("th").all_inner_texts() == [
                "stage",
                *_backends_in_order(recorded),
            ]
            text = page.inner_text("body")
            assert "`" not in text and "**" not in text and "| stage |" not in text
            assert "Description" not in page.locator("h2").all_inner_texts()
            headings = page.locator("h2").all_inner_texts()
            assert not [h for h in headings if h.endswith(".png")], headings
            assert "mlflow ui --backend-store-uri" in text  # what the UI link needs
            page.screenshot(path=str(SCREENSHOTS / "report.png"), full_page=True)
        finally:
            browser.close()


def _made_cell(seed: int, losses: list[float], accuracy: float | None) -> Any:
    from bench.core.types import Cell
    from bench.recording.reader import RecordedCell

    finished = accuracy is not None
    return RecordedCell(
        run_id=f"run{seed}",
        experiment_id="0",
        cell=Cell("relu-xavier", "torch", "cpu", seed),
        status="FINISHED",
        start_time=seed,
        tags={"outcome": "ok" if finished else "diverged"},
        params={},
        metrics={"test_accuracy": accuracy} if finished else {},
        histories={"train_loss": list(enumerate(losses, start=1))},
    )


def test_a_mean_of_one_seed_is_named_as_that_seed() -> None:
    """Of two seeds, one diverged with no finite loss: the loss curve is seed 0's own, and the
    table over the seeds gives the one accuracy as it is, not as a mean ± 0."""
    from bench.recording.figures import _plot_epochs
    from bench.recording.run_report import cell_row, group_rows

    cells = [_made_cell(0, [0.5, 0.25], 0.97), _made_cell(1, [float("nan")], None)]
    from matplotlib.figure import Figure

    ax = Figure().subplots()
    _plot_epochs(ax, cells, "train_loss", 1.0, log=True)
    assert ax.get_legend_handles_labels()[1] == ["torch cpu (seed 0)"]
    [row] = group_rows([cell_row(cell) for cell in cells])
    assert row[4:7] == ["1 ok, 1 diverged", "97.00% (n=1)", "-"]
