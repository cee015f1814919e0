from __future__ import annotations

import pytest

from bench.perf import flops_per_sample, roofline, time_breakdown
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
