"""The JAX backend: step-by-step parity with PyTorch, bitwise reruns, and that it learns."""

from __future__ import annotations

import numpy as np
import pytest

from backends import is_installed, load_backend
from backends.base import Backend
from bench.core.data import Splits
from bench.core.options import Options
from bench.core.seeding import dropout_masks, seeded_run
from bench.core.spec import StageSpec, load_stage, with_epochs
from bench.execution.parity_check import TOLERANCES, relative_difference, weights_difference
from tests.conftest import subset

pytest.importorskip("jax")

PARITY_STEPS = 50  # bench.execution.parity_check's float32 window; float64's bound holds there too


def _backend(name: str, spec: StageSpec, data: Splits, options: Options, seed: int = 0) -> Backend:
    backend = load_backend(name)("cpu", options)
    backend.load_data(data)
    backend.build(spec, seeded_run(spec, seed, data.train_x.shape[0]))
    return backend


def _epochs(backend: Backend, spec: StageSpec, n_train: int, epochs: int) -> np.ndarray:
    run = seeded_run(spec, 0, n_train)
    return np.concatenate([backend.train_epoch(run.epoch_orders[e]) for e in range(epochs)])


@pytest.fixture(scope="module")
def parity_data(mnist: Splits) -> Splits:
    return subset(mnist, n_train=100 * PARITY_STEPS)  # one epoch: the parity window


@pytest.fixture(scope="module")
def small(mnist: Splits) -> Splits:
    return subset(mnist, n_train=2000)


@pytest.mark.skipif(not is_installed("torch"), reason="torch not installed")
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("stage", ["relu-xavier", "adam", "dropout"])
def test_parity_with_torch_within_bench_parity_bounds(
    stage: str, dtype: str, parity_data: Splits
) -> None:
    """Parity mode (numpy's masks, updates op by op, float32 accumulating in float64): JAX's
    step losses stay within the bound `bench parity` holds every pair of backends to."""
    spec = with_epochs(load_stage(stage), 1)
    options = Options(data_dir="", threads=2, dtype=dtype, parity=True)  # type: ignore[arg-type]
    run = seeded_run(spec, 0, parity_data.train_x.shape[0])
    order = run.epoch_orders[0]
    masks = dropout_masks(spec, run, 0, PARITY_STEPS) if spec.model.dropout_rate else None
    losses, params = {}, {}
    for name in ("jax", "torch"):
        backend = _backend(name, spec, parity_data, options)
        losses[name] = backend.train_epoch(order, masks)
        params[name] = backend.parameters()
    assert losses["jax"].dtype == np.dtype(dtype) and len(losses["jax"]) == PARITY_STEPS
    _, tolerance = TOLERANCES[dtype]
    worst = float(np.max(relative_difference(losses["jax"], losses["torch"])))
    assert worst <= tolerance, f"{stage} {dtype}: largest relative loss difference {worst:.3e}"
    assert weights_difference(params["jax"], params["torch"]) <= 100 * tolerance


@pytest.mark.parametrize("stage", ["dropout", "adam"])
def test_two_fresh_backends_rerun_bit_identical(stage: str, small: Splits) -> None:
    """Same seed, same losses to the last bit over two epochs: the own dropout masks depend on
    (seed, step) only, and XLA's CPU products sum in a fixed order."""
    spec = with_epochs(load_stage(stage), 2)
    runs = [_backend("jax", spec, small, Options(data_dir="", threads=2)) for _ in range(2)]
    first, again = (_epochs(backend, spec, 2000, 2) for backend in runs)
    assert first.tobytes() == again.tobytes()
    for a, b in zip(runs[0].parameters(), runs[1].parameters(), strict=True):
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("parity", [False, True], ids=["fast", "parity"])
def test_the_epochs_compiler_options_keep_every_bit(
    parity: bool, small: Splits, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The epoch compiled with its CPU options (copy insertion) and without them: the same
    losses and weights to the last bit; the options change which buffers XLA copies, not what
    it computes."""
    import backends.jax as jax_backend

    spec = with_epochs(load_stage("adam"), 2)
    options = Options(data_dir="", threads=2, parity=parity)
    with_options = _backend("jax", spec, small, options)
    assert with_options.environment()["xla_compiler_options"] == (
        "xla_cpu_copy_insertion_use_region_analysis=true"
    )
    monkeypatch.setattr(jax_backend, "_cpu_compiler_options", lambda: {})
    without = _backend("jax", spec, small, options)
    assert without.environment()["xla_compiler_options"] == ""
    first, second = (_epochs(backend, spec, 2000, 2) for backend in (with_options, without))
    assert first.tobytes() == second.tobytes()
    for a, b in zip(with_options.parameters(), without.parameters(), strict=True):
        assert a.tobytes() == b.tobytes()


def test_an_option_this_xla_does_not_know_is_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unknown option would fail every compilation; an older jaxlib compiles without it."""
    import backends.jax as jax_backend

    monkeypatch.setattr(jax_backend, "_CPU_COMPILER_OPTIONS", {"xla_cpu_no_such_option": True})
    jax_backend._cpu_compiler_options.cache_clear()
    try:
        assert jax_backend._cpu_compiler_options() == {}
    finally:
        jax_backend._cpu_compiler_options.cache_clear()


def test_float64_trains_in_float64(small: Splits) -> None:
    spec = with_epochs(load_stage("adam"), 1)
    backend = _backend("jax", spec, small, Options(data_dir="", threads=2, dtype="float64"))
    losses = _epochs(backend, spec, 2000, 1)
    assert losses.dtype == np.float64 and np.isfinite(losses).all()
    assert all(p.dtype == np.float64 for p in backend.parameters())
    env = backend.environment()
    assert (env["dtype"], env["compute_dtype"], env["jax_enable_x64"]) == ("float64",) * 2 + (
        "true",
    )


def test_environment_records_what_is_in_force(small: Splits) -> None:
    env = _backend(
        "jax", load_stage("relu-xavier"), small, Options(data_dir="", threads=2)
    ).environment()
    import jax

    assert env["framework"] == "jax" and env["framework_version"] == jax.__version__
    assert env["deterministic_ops"] == "true" and env["tf32"] == "false"
    assert env["matmul_precision"] == "highest" and env["cuda_version"] == "none"
    assert env["intra_op_threads"] and "jaxlib_version" in env and "xla_flags" in env


def test_fast_path_learns_relu_xavier_in_two_epochs(mnist: Splits) -> None:
    spec = with_epochs(load_stage("relu-xavier"), 2)
    backend = _backend("jax", spec, mnist, Options(data_dir="", threads=2))
    losses = _epochs(backend, spec, mnist.train_x.shape[0], 2)
    assert losses.shape == (1100,) and np.isfinite(losses).all()
    assert backend.accuracy("val") > 0.9
