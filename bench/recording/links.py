"""Where to look at an invocation in the MLflow UI: the command that serves it and the URL
that opens its cells (not MLflow 3's GenAI overview, where a new user found no runs): its saved
view (bench.recording.views) where the UI has them, else the runs view filtered to them."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from urllib.parse import urlencode

from bench.recording import views
from bench.recording.store import redacted

UI_HOST, UI_PORT = "127.0.0.1", 5000
# The runs table, newest first. This URL carries the search and its order, not the columns:
# those come with a saved view's link (view_url).
CELLS_FILTER = "tags.kind = 'cell'"


def mlflow_command() -> str:
    """The `mlflow` of the environment this runs in (a nox venv's is not on PATH)."""
    beside = Path(sys.executable).parent / "mlflow"
    if beside.exists():
        return str(beside)
    return shutil.which("mlflow") or "mlflow"


def ui_command(tracking_uri: str, port: int = UI_PORT) -> str:
    """The command that serves a store's UI; a server URI is its own UI."""
    if tracking_uri.startswith(("http://", "https://")):
        return ""
    return (
        f"{mlflow_command()} ui --backend-store-uri {tracking_uri} --host {UI_HOST} --port {port}"
    )


def ui_base(tracking_uri: str, port: int = UI_PORT) -> str:
    if tracking_uri.startswith(("http://", "https://")):
        return redacted(tracking_uri).rstrip("/")  # a link is printed and recorded
    return f"http://{UI_HOST}:{port}"


def cells_url(
    tracking_uri: str, experiment_id: str, invocation: str | None = None, port: int = UI_PORT
) -> str:
    """The experiment's runs view filtered to cells (one invocation's, if given)."""
    search = CELLS_FILTER
    if invocation:
        search = f"tags.invocation = '{invocation}' and {CELLS_FILTER}"
    query = urlencode(
        {
            "searchFilter": search,
            "orderByKey": "attributes.start_time",
            "orderByAsc": "false",
            "startTime": "ALL",
            "lifecycleFilter": "Active",
            **views.MODEL_TRAINING_MODE,
        }
    )
    return f"{ui_base(tracking_uri, port)}/#/experiments/{experiment_id}/runs?{query}"


def view_url(tracking_uri: str, experiment_id: str, key: str, port: int = UI_PORT) -> str:
    """A saved view: the cells with their columns and charts, as saved."""
    return f"{ui_base(tracking_uri, port)}/{views.link(experiment_id, key)}"


def cells_link(tracking_uri: str, experiment_id: str, invocation: str, view: str | None) -> str:
    """Where an invocation's cells are seen: its saved view, or the filtered runs table where
    it has none."""
    if view is not None:
        return view_url(tracking_uri, experiment_id, view)
    return cells_url(tracking_uri, experiment_id, invocation)


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """A run's own page (its description holds the report)."""
    return f"{ui_base(tracking_uri)}/#/experiments/{experiment_id}/runs/{run_id}"


def closing_lines(
    tracking_uri: str, experiment_id: str, parent_id: str, view: str | None = None
) -> list[str]:
    """What the command says last: the parent run, how to serve the UI and where to open it
    (its saved view, if it has one)."""
    lines = [f"recorded as parent run {parent_id}"]
    command = ui_command(tracking_uri)
    if command:
        lines.append(f"browse with: {command}")
    lines.append(f"  its cells: {cells_link(tracking_uri, experiment_id, parent_id, view)}")
    lines.append(f"  its report: {run_url(tracking_uri, experiment_id, parent_id)}")
    return lines
