"""An invocation's saved MLflow view: what its state holds and the line that links it (the tags
it writes to a real store, and a browser opening it: tests/test_ui.py)."""

from __future__ import annotations

from bench.recording import links, views


def test_the_view_holds_the_comparisons_columns_every_run_and_only_its_charts() -> None:
    logged = {"test_accuracy", "tutorial_test_accuracy", "train_samples_per_s", "canary_s"}
    state = views.view_state("p1", runs=12, logged=logged)
    assert state["searchFilter"] == "tags.invocation = 'p1' and tags.kind = 'cell'"
    assert state["selectedColumns"] == [
        "tags.`backend`",
        "tags.`stage`",
        "tags.`outcome`",
        "metrics.`test_accuracy`",
        "metrics.`tutorial_test_accuracy`",
        "metrics.`train_samples_per_s`",
    ]  # and not the UI's defaults: attributes.`Source`, `Models`, `Dataset`
    assert state["runsHiddenMode"] == "SHOW_ALL"
    shown = [c for c in state["compareRunCharts"] if not c["deleted"]]
    assert [c["metricKey"] for c in shown] == list(views.METRIC_COLUMNS)
    assert all(c["runsCountToCompare"] == 12 for c in shown)
    hidden = [c["metricKey"] for c in state["compareRunCharts"] if c["deleted"]]
    assert hidden == ["canary_s"]  # listed as deleted, or the UI adds a chart for it
    with_roofline = views.view_state("p1", 3, logged | {views.ROOFLINE})
    assert "metrics.`roofline_fraction`" in with_roofline["selectedColumns"]


def test_views_are_written_from_the_mlflow_that_reads_them() -> None:
    assert views.supported("3.17.2") and views.supported("4.0.0rc1")
    assert not views.supported("3.16.1") and not views.supported("2.22.0")


def test_the_printed_line_is_the_views_link_or_the_cells_url_without_one() -> None:
    with_view = links.closing_lines("sqlite:///r/mlflow.db", "3", "p1", view="p1")
    assert with_view[2] == (
        "  its cells: http://127.0.0.1:5000/#/experiments/3/runs"
        "?viewStateShareKey=p1&workflowType=machine_learning"
    )
    without = links.closing_lines("sqlite:///r/mlflow.db", "3", "p1")
    assert without[2] == f"  its cells: {links.cells_url('sqlite:///r/mlflow.db', '3', 'p1')}"
