from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from backends import BACKENDS, is_installed
from backends.keras_measured import KerasFit, device_kind
from backends.keras_reference import KERAS_BACKENDS, keras_installed
from bench.commands.perf import (
    ATTAINABLE_NOTE,
    KERAS_NOTE,
    REFERENCE_STAGE,
    KerasReference,
    _keras,
    perf_table,
    reference_records,
)
from bench.core.options import Options
from bench.core.spec import load_stage
from bench.core.types import Cell, CellResult, CellRun
from bench.execution.invocation import Plan
from bench.execution.load_monitor import CellLoad
from bench.execution.matrix import LocalExecutor
from bench.recording.speed import (
    DRIFT_LIMIT,
    attainable_figures,
    drift_lines,
    flops_per_sample,
    machine_peaks,
    roofline,
    step_products,
    time_breakdown,
)
from tests.conftest import device_params, gpu_available, skip_without_gpu
from tests.live import bench


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
    _, limits = drift_lines({("jax", "cpu"): 1.0}, {("jax", "cpu"): 0.8}, what="attainable limit")
    assert limits[0] == "attainable limit drift over the run: jax/cpu -20.0%"
    assert limits[1].startswith("WARNING: the attainable limit of jax/cpu moved by more than 10%")


def test_a_peak_that_moved_under_the_run_is_a_warning() -> None:
    start = {("torch", "cpu"): 360.0, ("tensorflow", "cpu"): 350.0}
    end = {("torch", "cpu"): 360.0 * (1 - DRIFT_LIMIT) - 1, ("tensorflow", "cpu"): 350.0}
    drift, lines = drift_lines(start, end)
    assert abs(drift["torch/cpu"]) > DRIFT_LIMIT and drift["tensorflow/cpu"] == 0.0
    assert len(lines) == 2
    assert lines[1].startswith("WARNING: the peak of torch/cpu moved by more than 10%")


needs_keras = pytest.mark.skipif(not keras_installed(), reason="keras not installed")


def keras_backend_params() -> list[object]:
    """Every registered backend that has a Keras backend; one whose framework is missing is
    skipped, not failed."""
    return [
        pytest.param(
            name,
            marks=pytest.mark.skipif(not is_installed(name), reason=f"{name} not installed"),
        )
        for name in BACKENDS
        if name in KERAS_BACKENDS
    ]


def _keras_fit(backend: str, device: str, data_dir: Path, tmp_path: Path) -> KerasFit:
    """The real reference, 2 epochs (the first is warm-up) on one thread: two threads beside
    another process's made PyTorch's ten times slower."""
    options = Options(data_dir=str(data_dir), threads=1)
    return LocalExecutor().keras_reference(backend, REFERENCE_STAGE, options, 2, device, tmp_path)


@needs_keras
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("backend", keras_backend_params())
@pytest.mark.slow
def test_the_keras_reference_runs_on_its_framework_and_the_cells_device(
    backend: str, device: str, data_dir: Path, tmp_path: Path
) -> None:
    """Keras chooses its backend at import, and left alone takes a GPU (with TF32 on
    TensorFlow and JAX) even as the baseline of CPU cells; the cells' threads, not its own."""
    skip_without_gpu(backend, device)
    fit = _keras_fit(backend, device, data_dir, tmp_path)
    assert fit.keras_backend == KERAS_BACKENDS[backend]
    assert device_kind(fit.ran_on) == device, fit.ran_on
    assert fit.tf32 is False and fit.intra_op_threads == 1
    assert fit.keras_version.startswith("3.") and fit.samples_per_s > 0


@needs_keras
@pytest.mark.parametrize("backend", keras_backend_params())
@pytest.mark.slow
def test_a_failed_keras_reference_is_one_line_naming_its_backend(
    backend: str, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A reference that cannot run (here: on a GPU its framework does not see) is a warning
    and a reference without a figure, not the end of the perf command."""
    if gpu_available(backend):
        pytest.skip(f"{backend} sees a GPU: its reference there would run")
    plan = Plan(
        cells=[],
        specs={},
        options=Options(data_dir=str(data_dir), threads=1),
        tracking_uri="",
        experiment="",
    )
    reference = _keras(plan, 2, backend, "gpu")
    [line] = capsys.readouterr().out.splitlines()
    assert line.startswith(f"WARNING: measuring the Keras reference on keras/{backend} gpu failed")
    assert line.endswith("sees no GPU for Keras to run on; the table shows - for it")
    assert reference.fit is None and reference.error is not None


BUSY = CellLoad(200.0, 100.0, 1.9, 0.0, ("canary -50%",))


def _cell_run(
    stage: str, backend: str, samples_per_s: float, attainable: float | None = None
) -> CellRun:
    cell = Cell(stage, backend, "cpu", 0)  # type: ignore[arg-type]
    result = CellResult(cell, "converged", 0.98, samples_per_s, {}, {}, [], {}, {})
    run = CellRun(cell, result, None, 10.0, Path("worker.log"))
    if attainable is not None:
        run.speed.update(
            attainable_samples_per_s=attainable, attainable_fraction=samples_per_s / attainable
        )
    return run


def _fit(samples_per_s: float, backend: str, ran_on: str = "cpu") -> KerasFit:
    return KerasFit(samples_per_s, ran_on, backend, "3.15.1", False, 2, backend == "jax")


def test_each_cell_is_held_against_keras_on_its_own_framework() -> None:
    """torch's cells against Keras on torch, TensorFlow's against nothing (its reference
    failed), and a row per reference: its speed against the peaks as the cells' are, marked
    where the machine was busy around it."""
    runs = [
        _cell_run("relu-xavier", "tensorflow", 40_000.0, attainable=60_000.0),
        _cell_run("relu-xavier", "torch", 30_000.0),
        _cell_run("adam", "torch", 15_000.0),
    ]
    speed = roofline(10_000.0, load_stage(REFERENCE_STAGE), 100.0, 50.0)
    references = [
        KerasReference("tensorflow", "cpu", error="measuring ... failed: no"),
        KerasReference("torch", "cpu", _fit(10_000.0, "torch"), speed=speed, load=BUSY),
    ]
    lines = perf_table(runs, references).splitlines()
    rows = [line.split() for line in lines[2:-2]]
    # stage, backend, device, samples/s, GFLOP/s, roofline, own peak, attainable, of
    # attainable, x Keras fit, vs relu-xavier, harness share
    assert [row[9:11] for row in rows[:3]] == [["-", "1.00"], ["3.00", "1.00"], ["1.50", "0.50"]]
    assert [row[7:9] for row in rows[:3]] == [["60,000", "0.67"], ["-", "-"], ["-", "-"]]
    assert rows[3] == ["relu-xavier", "keras/tensorflow", "cpu"] + ["-"] * 9
    assert (
        rows[4]
        == ["relu-xavier", "keras/torch", "cpu", "10,000!", "12.1", "0.12", "0.24"] + ["-"] * 5
    )
    assert lines[-3:] == [
        ATTAINABLE_NOTE,
        KERAS_NOTE,
        "! speed not stable: keras/torch/cpu canary -50%",
    ]
    without = perf_table(runs, []).splitlines()[:-1]
    assert len(without) == 2 + len(runs) and [row.split()[9] for row in without[2:]] == ["-"] * 3


def test_the_parent_records_each_reference_and_tensorflows_metric_under_its_old_name() -> None:
    tf_device = "/job:localhost/replica:0/task:0/device:CPU:0"
    metrics, tags = reference_records(
        [
            KerasReference("tensorflow", "cpu", _fit(20_000.0, "tensorflow", tf_device)),
            KerasReference("jax", "cpu", _fit(30_000.0, "jax", "TFRT_CPU_0"), load=BUSY),
            KerasReference("torch", "cpu", error="measuring the Keras reference failed: why"),
        ]
    )
    assert metrics == {
        "keras_fit_samples_per_s_tensorflow_cpu": 20_000.0,
        "keras_fit_samples_per_s_cpu": 20_000.0,  # what tooling read before
        "keras_fit_samples_per_s_jax_cpu": 30_000.0,
    }
    assert tags["keras_fit_ran_on_tensorflow_cpu"] == tf_device
    assert tags["keras_fit_keras_backend_jax_cpu"] == "jax"
    assert tags["keras_fit_keras_version_jax_cpu"] == "3.15.1"
    assert tags["keras_fit_jit_compile_jax_cpu"] == "true"
    assert tags["keras_fit_tf32_tensorflow_cpu"] == "false"
    assert tags["keras_fit_speed_stable_jax_cpu"] == "false"
    assert tags["keras_fit_speed_unstable_reason_jax_cpu"] == "canary -50%"
    assert tags["keras_fit_error_torch_cpu"] == "measuring the Keras reference failed: why"
    assert [key for key in [*metrics, *tags] if "torch" in key] == ["keras_fit_error_torch_cpu"]


def test_devices_are_told_apart_as_each_framework_names_them() -> None:
    for name, kind in [
        ("/job:localhost/replica:0/task:0/device:CPU:0", "cpu"),
        ("/job:localhost/replica:0/task:0/device:GPU:0", "gpu"),
        ("cpu", "cpu"),
        ("cuda:0", "gpu"),
        ("TFRT_CPU_0", "cpu"),
    ]:
        assert device_kind(name) == kind


def test_one_keras_epoch_is_refused_before_anything_runs(tmp_path: Path) -> None:
    """The reference's speed is the median of the epochs after the first: one leaves none."""
    store = tmp_path / "mlflow.db"
    done = bench("perf", "--keras-epochs", "1", "--tracking-uri", f"sqlite:///{store}")
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "--keras-epochs: 1 leaves no epoch after the first" in done.stderr
    assert not store.exists()


def test_the_step_products_are_what_a_step_computes_in_its_order() -> None:
    """Forward products, then from the top each layer's input and weight gradients (the
    first layer has no input gradient): their FLOPs are flops_per_sample times the batch."""
    spec = load_stage("relu-xavier")
    products = step_products(spec)
    assert products == [
        (100, 784, 256, ""),
        (100, 256, 256, ""),
        (100, 256, 10, ""),
        (100, 10, 256, "b"),  # delta @ W3.T: W3 stored 256 x 10
        (256, 100, 10, "a"),  # h2.T @ delta: h2 stored 100 x 256
        (100, 256, 256, "b"),
        (256, 100, 256, "a"),
        (784, 100, 256, "a"),
    ]
    assert products[3].stored == ((100, 10), (256, 10))
    assert products[4].stored == ((100, 256), (100, 10))
    assert sum(p.flops for p in products) == 100 * flops_per_sample(spec)
    limit = attainable_figures(products, 400e-6, 100)
    assert limit["attainable_samples_per_s"] == pytest.approx(250_000)
    assert limit["attainable_gflops"] == pytest.approx(250_000 * flops_per_sample(spec) / 1e9)
    assert limit["attainable_step_us"] == pytest.approx(400)
