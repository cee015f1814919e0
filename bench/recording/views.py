"""An invocation's saved view in the MLflow UI: its cells with the comparison's columns and
charts, opened by one link in any browser, with no click.

MLflow's "Views -> Save as new view" keeps a runs view's state (search, columns, charts, which
runs are shown) as the experiment tag `mlflow.sharedViewState.<key>`, a flat JSON object, and
`#/experiments/<id>/runs?viewStateShareKey=<key>` opens it. The harness writes the same tag. The
keys below are those MLflow 3.17.2's frontend reads back (its bundle keeps the search's keys and
the UI state's, and drops which runs are expanded, pinned or hidden one by one)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from bench.core.program import PROGRAM
from bench.recording.figures import BACKEND_COLORS
from bench.recording.reader import NOTE_TAG, PAGE_SIZE, Reader, search_runs

# Saved views and the `workflowType` URL switch are read by MLflow 3.17.2's frontend (checked in
# its bundle); an older UI gets the plain cells URL, which it understands.
VIEWS_SINCE = (3, 17)
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
SHARE_KEY = "viewStateShareKey"
RUN_COLOR_TAG = "mlflow.runColor"  # the colour the UI draws a run in, in the table and charts
# Without it the UI opens an experiment in the mode last picked in this browser, and a fresh
# browser's is GenAI: an overview of traces, where a new user found no runs.
MODEL_TRAINING_MODE = {"workflowType": "machine_learning"}

# What the comparison needs, in the table's order.
TAG_COLUMNS = ("backend", "stage", "outcome")
METRIC_COLUMNS = ("test_accuracy", "tutorial_test_accuracy", "train_samples_per_s")
ROOFLINE = "roofline_fraction"  # only where the cells' peak was measured
CHARTS_SECTION = "comparison"
# The runs table's own first columns (name, created, duration), as its grid names them.
FIXED_COLUMNS = ("attributes.`Run Name`", "runDateAndNestInfo", "duration")
METRIC_WIDTH_PX = 170
NOTE_OPENING = f"Runs recorded by {PROGRAM}:"  # marks a description this module wrote


def supported(mlflow_version: str) -> bool:
    """Whether this MLflow's UI opens a saved view from its link."""
    parts = []
    for part in mlflow_version.split(".")[:2]:
        digits = "".join(c for c in part if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts) >= VIEWS_SINCE


def run_color(backend: str) -> str | None:
    """A backend's colour, the same in the UI as in the report's figures."""
    return BACKEND_COLORS.get(backend)


def _column(kind: str, name: str) -> str:
    return f"{kind}.`{name}`"


def _charts(metrics: list[str], others: list[str], runs: int) -> list[dict[str, Any]]:
    """A bar chart per compared metric, in that order; every other metric the cells logged as a
    deleted chart, as the UI otherwise adds one for each (39, alphabetical)."""
    shown = [
        {
            "uuid": f"chart-{key}",
            "type": "BAR",
            "metricKey": key,
            "displayName": key,
            "metricSectionId": CHARTS_SECTION,
            "runsCountToCompare": runs,  # the UI's default draws the first 10
            "deleted": False,
            "isGenerated": False,
        }
        for key in metrics
    ]
    hidden = [
        {
            "uuid": f"chart-{key}",
            "type": "BAR",
            "metricKey": key,
            "metricSectionId": CHARTS_SECTION,
            "deleted": True,
            "isGenerated": True,
        }
        for key in others
    ]
    return shown + hidden


def view_state(invocation: str, runs: int, logged: set[str]) -> dict[str, Any]:
    """The saved state of one invocation's cells: filter, columns, every run, charts."""
    metrics = [*METRIC_COLUMNS, *([ROOFLINE] if ROOFLINE in logged else [])]
    columns = [_column("tags", name) for name in TAG_COLUMNS]
    columns += [_column("metrics", name) for name in metrics]
    section = {
        "uuid": CHARTS_SECTION,
        "name": "Comparison",
        "display": True,
        "isReordered": True,
        "deleted": False,
        "isGenerated": False,
    }
    return {
        "searchFilter": f"tags.invocation = '{invocation}' and tags.kind = 'cell'",
        "orderByKey": "attributes.start_time",
        "orderByAsc": False,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        # The default columns (Source, Models, Dataset) are left out: the same in every row.
        "selectedColumns": columns,
        # The UI puts metrics before tags; what a row is (its backend, stage) reads first. The
        # UI applies it once its grid has every column, which a loaded machine may skip.
        "columnOrder": [*FIXED_COLUMNS, *columns],
        # Wide enough for the metrics' names, cut to "train_samples_" at the UI's 100 px.
        "columnWidths": {column: METRIC_WIDTH_PX for column in columns[len(TAG_COLUMNS) :]},
        "runsHiddenMode": "SHOW_ALL",
        "compareRunCharts": _charts(metrics, sorted(logged - set(metrics)), max(runs, 10)),
        "compareRunSections": [section],
        "isAccordionReordered": True,  # keeps the charts in the order above
        "hideEmptyCharts": True,
    }


def save(
    client: Any, experiment_id: str, invocation: str, page_size: int = PAGE_SIZE
) -> str | None:
    """Write the invocation's view as an experiment tag (and the experiment's description,
    where the user wrote none) through the store's client; the view's key (the invocation's
    id), or None where this MLflow's UI has no saved views."""
    import mlflow

    if not supported(mlflow.__version__):
        return None
    query = f"tags.invocation = '{invocation}' and tags.kind = 'cell'"
    cells = search_runs(client, [experiment_id], query, page_size=page_size)
    logged = {key for run in cells for key in run.data.metrics}
    state = view_state(invocation, len(cells), logged)
    client.set_experiment_tag(experiment_id, VIEW_TAG_PREFIX + invocation, json.dumps(state))
    note = client.get_experiment(experiment_id).tags.get(NOTE_TAG, "")
    if not note or note.startswith(NOTE_OPENING):  # a description the user wrote stays theirs
        client.set_experiment_tag(experiment_id, NOTE_TAG, description(experiment_id, invocation))
    return invocation


def saved(reader: Reader, experiment_id: str, key: str) -> str | None:
    """The key, if the experiment holds that view; None where it does not, or where the store
    cannot say now (the printed link then falls back to the cells URL)."""
    try:
        tags = reader.experiment_tags(experiment_id)
    except Exception:  # the store went away after the run was recorded: a link is not worth a
        return None  # traceback
    return key if VIEW_TAG_PREFIX + key in tags else None


def link(experiment_id: str, key: str) -> str:
    """The view's address inside the UI (what follows its host)."""
    query = urlencode({SHARE_KEY: key, **MODEL_TRAINING_MODE})
    return f"#/experiments/{experiment_id}/runs?{query}"


def description(experiment_id: str, key: str) -> str:
    """The experiment's description: what its runs are and how to open the newest view."""
    return (
        f"{NOTE_OPENING} one run per cell (a backend, stage, device and seed: its tags"
        " `backend`, `stage`, `device`, `seed`, `outcome`), one parent run per invocation"
        " whose description is its report.\n\n"
        f"**[Open the newest invocation's cells]({link(experiment_id, key)})**: test accuracy,"
        " the tutorial's accuracy and samples/s per cell, with their charts. Each invocation has"
        " such a view: its link is printed when it ends, as `its cells:`."
    )


def latest(reader: Reader, experiment_id: str) -> str | None:
    """The key of the experiment's newest invocation that has a view, if any."""
    tags = reader.experiment_tags(experiment_id)
    keys = [key.removeprefix(VIEW_TAG_PREFIX) for key in tags if key.startswith(VIEW_TAG_PREFIX)]
    if not keys:
        return None
    quoted = ", ".join(f"'{key}'" for key in keys)
    newest = reader.newest([experiment_id], f"attributes.run_id IN ({quoted})")
    return newest.run_id if newest else None
