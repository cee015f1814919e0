"""The one reader of the store, on a real SQLite store: every search read to its last page, one
run per cell (its latest attempt), and the cell's histories and step losses read back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from bench.core.errors import BenchError
from bench.core.types import Cell
from bench.recording.reader import INVOCATION_TAG, Reader, RecordedRun, search_runs


@dataclass(frozen=True)
class Store:
    uri: str
    client: Any
    experiment: str
    parent: str


def _cell_tags(parent: str, seed: int) -> dict[str, str]:
    return {
        INVOCATION_TAG: parent,
        "kind": "cell",
        "stage": "relu-xavier",
        "backend": "torch",
        "device": "cpu",
        "seed": str(seed),
    }


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """A parent and 7 cells (seeds 0-6); seed 3 ran twice, as a resume runs a cell again."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    folder = tmp_path_factory.mktemp("reader")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("e", artifact_location=(folder / "a").as_uri())
    parent = client.create_run(experiment, tags={"kind": "matrix"}).info.run_id
    start = 1_000_000
    for n, seed in enumerate([0, 1, 2, 3, 4, 5, 6, 3]):
        run = client.create_run(experiment, start_time=start + n, tags=_cell_tags(parent, seed))
        run_id = run.info.run_id
        client.log_batch(
            run_id, metrics=[Metric("epoch_seconds", 2.0 + e + n, 0, e) for e in (1, 2)]
        )
        client.set_tag(run_id, "attempt", str(n))
        if n == 7:  # the one whose losses are read back
            losses = folder / "step_losses.csv"
            losses.write_text(f"step,loss\n1,{seed}.5\n2,{seed}.25\n")
            client.log_artifact(run_id, str(losses))
        client.set_terminated(run_id, "KILLED" if n == 3 else "FINISHED")
    return Store(uri, client, experiment, parent)


def _parent(store: Store) -> RecordedRun:
    return Reader(store.client, store.uri).run(store.parent, "missing")


@pytest.mark.slow  # a new SQLite store: MLflow migrates its tables (5-20 s)
def test_a_search_reads_every_page(store: Store) -> None:
    query = f"tags.{INVOCATION_TAG} = '{store.parent}'"
    one_page = store.client.search_runs([store.experiment], query, max_results=3)
    assert len(one_page) == 3 and one_page.token  # MLflow's page: the rest is left behind
    for page_size in (1, 3, 1_000):
        found = search_runs(store.client, [store.experiment], query, page_size=page_size)
        assert len(found) == 8
        assert len({run.info.run_id for run in found}) == 8  # no run read twice


@pytest.mark.slow  # a new SQLite store: MLflow migrates its tables (5-20 s)
def test_a_limit_stops_the_search_there(store: Store) -> None:
    reader = Reader(store.client, store.uri, page_size=2)
    assert len(reader.search([store.experiment], "tags.kind = 'cell'", limit=5)) == 5
    newest = reader.newest([store.experiment], "tags.kind = 'cell'")
    assert newest is not None and newest.tags["attempt"] == "7"


@pytest.mark.slow  # a new SQLite store: MLflow migrates its tables (5-20 s)
def test_the_cells_are_one_per_cell_the_latest_attempt_read_whole(store: Store) -> None:
    reader = Reader(store.client, store.uri, page_size=3)  # three pages of runs
    cells = reader.cells(_parent(store), histories=("epoch_seconds",), losses=True)
    assert [cell.seed for cell in cells] == [0, 1, 2, 4, 5, 6, 3]  # in the order they ran
    again = cells[-1]
    assert again.cell == Cell("relu-xavier", "torch", "cpu", 3)
    assert again.tags["attempt"] == "7" and again.status == "FINISHED"
    assert again.histories == {"epoch_seconds": [(1, 10.0), (2, 11.0)]}
    assert again.step_losses is not None
    np.testing.assert_array_equal(again.step_losses, [3.5, 3.25])
    assert again.stage_text is None and again.spec is None  # not asked for


@pytest.mark.slow  # a new SQLite store: MLflow migrates its tables (5-20 s)
def test_a_cell_without_its_stage_file_cannot_be_rerun(store: Store) -> None:
    reader = Reader(store.client, store.uri)
    cell = reader.cells(_parent(store))[0]
    with pytest.raises(BenchError, match="has no stage file or step losses"):
        reader.cell(cell.run_id)
    with pytest.raises(BenchError, match="is not a cell run"):
        reader.cell(store.parent)


@pytest.mark.slow  # a new SQLite store: MLflow migrates its tables (5-20 s)
def test_an_unknown_run_is_the_message_given(store: Store) -> None:
    reader = Reader(store.client, store.uri)
    with pytest.raises(BenchError, match=r"^no such run here$"):
        reader.run("0123456789abcdef0123456789abcdef", "no such run here")
    with pytest.raises(BenchError, match="is not an invocation's parent run"):
        reader.invocation(reader.cells(_parent(store))[0].run_id)
