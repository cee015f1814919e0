from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from backends import is_installed
from bench.core.spec import load_stage
from bench.recording.perf import (
    DRIFT_LIMIT,
    drift_lines,
    flops_per_sample,
    machine_peaks,
    roofline,
    time_breakdown,
)
from tests.conftest import device_params, skip_without_gpu


def test_flops_per_sample_counts_what_is_computed() -> None:
    # 6*in*out per layer, less the first layer's input gradient (2*784*256): never computed
    assert flops_per_sample(load_stage("relu-xavier")) == 6 * (784 * 256 + 256 * 256 + 256 * 10) - (
        2 * 784 * 256
    )
    assert flops_per_sample(load_stage("relu-xavier")) == 1_211_392


@pytest.mark.skipif(not is_installed("torch"), reason="torch not installed")
def test_flops_per_sample_agrees_with_pytorchs_flop_counter() -> None:
    """An independent count: PyTorch's FlopCounterMode over one plain autograd training step
    of the stage's model (nn.Linear layers, images that need no gradient)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    spec = load_stage("relu-xavier")
    sizes = spec.model.layer_sizes
    layers: list[torch.nn.Module] = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        layers += [torch.nn.Linear(fan_in, fan_out), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers[:-1])
    batch = spec.training.batch_size
    images, labels = torch.rand(batch, sizes[0]), torch.randint(0, sizes[-1], (batch,))
    with FlopCounterMode(display=False) as counter:
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
    counted = counter.get_total_flops() / batch
    assert counted == pytest.approx(flops_per_sample(spec), rel=0.02)


def test_roofline_fraction() -> None:
    spec = load_stage("relu-xavier")
    metrics = roofline(100_000.0, spec, 242.2784, 121.1392)
    assert metrics["train_gflops"] == pytest.approx(121.13920)
    assert metrics["roofline_fraction"] == pytest.approx(0.5)
    assert metrics["framework_roofline_fraction"] == pytest.approx(1.0)
    assert roofline(None, spec, 300.0) == {}
    assert "roofline_fraction" not in roofline(1.0, spec, None)
    assert "framework_roofline_fraction" not in roofline(1.0, spec, 300.0)


def test_the_machine_peak_is_the_best_framework_on_each_device() -> None:
    peaks = {("tensorflow", "cpu"): 498.0, ("torch", "cpu"): 221.0, ("torch", "gpu"): 5e4}
    assert machine_peaks(peaks) == {"cpu": (498.0, "tensorflow"), "gpu": (5e4, "torch")}


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


def test_the_peak_is_tf32_only_where_the_cells_may_use_tf32() -> None:
    from bench.core.options import Options
    from bench.execution.invocation import peak_uses_tf32

    tf32 = Options(data_dir="d", threads=1, tf32=True)
    assert peak_uses_tf32("gpu", tf32)
    assert not peak_uses_tf32("cpu", tf32)  # CPUs have no TF32
    assert not peak_uses_tf32("gpu", Options(data_dir="d", threads=1))


def _peak(device: str, tf32: bool, tmp_path: Path) -> float:
    from bench.execution.matrix import LocalExecutor

    folder = tmp_path / f"{device}-{tf32}"
    folder.mkdir()
    return LocalExecutor().peak("torch", device, 2, folder, tf32=tf32)


@pytest.mark.skipif(not is_installed("torch"), reason="torch not installed")
def test_a_tf32_peak_is_measured_through_the_worker(tmp_path: Path) -> None:
    """On a CPU TF32 changes nothing: the request reaches the framework and a rate comes back."""
    assert 0 < _peak("cpu", True, tmp_path) < 1e6


@pytest.mark.gpu
@pytest.mark.skipif(not is_installed("torch"), reason="torch not installed")
def test_the_tf32_peak_is_the_faster_limit_on_a_gpu(tmp_path: Path) -> None:
    skip_without_gpu("torch", "gpu")
    assert _peak("gpu", True, tmp_path) > 1.5 * _peak("gpu", False, tmp_path)


def _keras_event(device: str, data_dir: Path, tmp_path: Path) -> dict[str, object]:
    from bench.execution.matrix import spawn_worker

    request = {
        "mode": "keras",
        "stage": "relu-xavier",
        "data_dir": str(data_dir),
        "threads": 2,
        "epochs": 2,
        "device": device,
    }
    done = spawn_worker(request, tmp_path, lambda event: None)
    events = [e for e in done.events if e["type"] == "keras"]
    assert done.code == 0 and events, (tmp_path / "worker.log").read_text()[-2000:]
    return events[0]


@pytest.mark.parametrize("device", device_params())
@pytest.mark.skipif(not is_installed("tensorflow"), reason="tensorflow not installed")
def test_the_keras_reference_runs_on_the_device_it_is_compared_with(
    device: str, data_dir: Path, tmp_path: Path
) -> None:
    """Left alone, Keras takes the GPU (with TF32) even as the baseline of CPU cells."""
    skip_without_gpu("tensorflow", device)
    event = _keras_event(device, data_dir, tmp_path)
    assert f"{device.upper()}:0" in str(event["ran_on"]) and event["tf32"] is False
    assert float(event["samples_per_s"]) > 0  # type: ignore[arg-type]
