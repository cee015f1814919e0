from __future__ import annotations

import pytest

from bench.perf import DRIFT_LIMIT, drift_lines, flops_per_sample, roofline, time_breakdown
from bench.spec import load_stage


def test_flops_per_sample_is_the_issue_figure() -> None:
    # forward 2*in*out + backward 4*in*out per layer: 6 * (784*256 + 256*256 + 256*10)
    assert flops_per_sample(load_stage("relu-xavier")) == 1_612_800


def test_roofline_fraction() -> None:
    spec = load_stage("relu-xavier")
    metrics = roofline(100_000.0, spec, 322.56)
    assert metrics["train_gflops"] == pytest.approx(161.28)
    assert metrics["roofline_fraction"] == pytest.approx(0.5)
    assert roofline(None, spec, 300.0) == {}
    assert "roofline_fraction" not in roofline(1.0, spec, None)


def test_time_breakdown_accounts_for_every_second() -> None:
    child = {
        "framework_import": 3.0,
        "data_load": 0.2,
        "build": 0.5,
        "train": 30.0,
        "evaluate": 0.3,
        "dropout_masks": 0.0,
    }
    parent = {"process_start": 0.2, "mlflow_logging": 0.3, "display": 0.01, "total": 35.0}
    metrics = time_breakdown(child, parent, [2.0, 1.0, 1.0, 1.2])
    assert metrics["time_bookkeeping_seconds"] == pytest.approx(35.0 - 34.51)
    assert metrics["time_compilation_seconds"] == pytest.approx(1.0)
    assert metrics["harness_seconds"] == pytest.approx(0.2 + 0.3 + 0.01 + 0.49)
    assert metrics["harness_fraction"] == pytest.approx(1.0 / 35.0)


def test_a_steady_peak_is_reported_without_a_warning() -> None:
    drift, lines = drift_lines({("torch", "cpu"): 360.0}, {("torch", "cpu"): 351.0})
    assert drift == {"torch/cpu": pytest.approx(-0.025)}
    assert lines == ["peak drift over the run: torch/cpu -2.5%"]


def test_a_peak_that_moved_under_the_run_is_a_warning() -> None:
    start = {("torch", "cpu"): 360.0, ("tensorflow", "cpu"): 350.0}
    end = {("torch", "cpu"): 360.0 * (1 - DRIFT_LIMIT) - 1, ("tensorflow", "cpu"): 350.0}
    drift, lines = drift_lines(start, end)
    assert abs(drift["torch/cpu"]) > DRIFT_LIMIT and drift["tensorflow/cpu"] == 0.0
    assert len(lines) == 2
    assert lines[1].startswith("WARNING: the peak of torch/cpu moved by more than 10%")
