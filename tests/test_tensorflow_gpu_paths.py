"""TensorFlow's GPU paths: the deterministic dense loss, the peak's synchronisation, memory growth.

The GPU loss and the peak's timing are checked on the CPU; what needs a GPU is marked `gpu`.
Op determinism is process-global: the backends turn it on by default, and so do these tests.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from backends import is_installed
from bench.core.data import Splits
from bench.core.options import Options
from bench.core.seeding import seeded_run
from bench.core.spec import load_stage, with_epochs
from bench.execution.peaks import measure_peak, peak_options
from tests.conftest import ROOT, skip_without_gpu, subset

if not is_installed("tensorflow"):
    pytest.skip("tensorflow not installed", allow_module_level=True)

import tensorflow as tf

from backends import tensorflow as tfb

DENSE = tfb.mean_cross_entropy_for(parity=False, device="gpu")


def loss_and_gradient(
    fn: tfb.CrossEntropy, logits: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    x = tf.constant(logits)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = fn(x, tf.constant(labels))
    return loss.numpy(), tape.gradient(loss, x).numpy()


def test_each_setting_gets_its_loss() -> None:
    # CPU: the fused kernel's backprop; parity: the op as written on every device.
    assert tfb.mean_cross_entropy_for(False, "cpu") is tfb._mean_cross_entropy
    assert DENSE is tfb._mean_cross_entropy_dense
    for device in ("cpu", "gpu"):
        assert tfb.mean_cross_entropy_for(True, device) is tfb._mean_cross_entropy_taped


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_dense_loss_and_gradient_equal_the_fused_kernels(dtype: type) -> None:
    rng = np.random.default_rng(7)
    logits = (rng.normal(size=(100, 10)) * 10.0).astype(dtype)
    labels = rng.integers(0, 10, 100).astype(np.int32)
    fused_loss, fused_grad = loss_and_gradient(tfb._mean_cross_entropy, logits, labels)
    dense_loss, dense_grad = loss_and_gradient(DENSE, logits, labels)
    assert dense_loss.dtype == fused_loss.dtype == dtype
    np.testing.assert_allclose(dense_loss, fused_loss, rtol=1e-6)
    # Within rounding: softmax - 1 cancels for a confident row, so an element is held to an
    # ulp or two of the largest gradient, not of itself (measured: 1 ulp at most).
    atol = 2 * np.finfo(dtype).eps * np.abs(fused_grad).max()
    np.testing.assert_allclose(dense_grad, fused_grad, rtol=1e-6, atol=atol)


def compiled_ops(fn: tfb.CrossEntropy) -> set[str]:
    """The HLO opcodes of an XLA-compiled step of `fn`'s loss and its gradient (on the CPU)."""

    @tf.function(jit_compile=True)
    def step(logits: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        with tf.GradientTape() as tape:
            tape.watch(logits)
            loss = fn(logits, labels)
        return loss, tape.gradient(loss, logits)

    logits = tf.constant(np.random.default_rng(3).normal(size=(100, 10)), tf.float32)
    labels = tf.constant(np.arange(100) % 10, tf.int32)
    # A device name: without one TF finds the device by drawing an unseeded random number,
    # which op determinism refuses (platform_name, which TF suggests instead, still draws it).
    hlo = step.experimental_get_compiler_ir(logits, labels)(
        stage="hlo", device_name="/device:CPU:0"
    )
    # An instruction reads `%name = type opcode(operands), ...`.
    return set(re.findall(r"= \S+ ([a-z][a-z0-9-]*)\(", hlo))


def test_the_dense_gradient_compiles_without_gather_or_scatter() -> None:
    tf.config.experimental.enable_op_determinism()
    taped = compiled_ops(tfb._mean_cross_entropy_taped)
    dense = compiled_ops(DENSE)
    # The check can fail: TF's deterministic sparse form gathers each row's log-probability
    # and its gradient scatters back (UnsortedSegmentSum).
    assert {"gather", "scatter"} <= taped, sorted(taped)
    assert not {"gather", "scatter"} & dense, sorted(dense)
    assert {"exponential", "log", "reduce"} <= dense  # it did compile the loss


@pytest.fixture(scope="module")
def small(mnist: Splits) -> Splits:
    return subset(mnist, n_train=300)


def train_on_cpu(
    stage: str, splits: Splits, cross_entropy: tfb.CrossEntropy | None = None
) -> np.ndarray:
    """Two epochs' step losses on the CPU, with the backend's own loss unless one is given."""
    spec = with_epochs(load_stage(stage), 2)
    backend = tfb.TensorFlowBackend("cpu", Options(data_dir="", threads=2))
    if cross_entropy is not None:
        backend._cross_entropy = cross_entropy
    backend.load_data(splits)
    run = seeded_run(spec, 0, splits.train_x.shape[0])
    backend.build(spec, run)
    return np.concatenate([backend.train_epoch(order) for order in run.epoch_orders[:2]])


@pytest.mark.parametrize("stage", ["relu-xavier", "adam", "dropout"])
def test_cpu_training_is_unchanged_and_the_gpu_loss_trains_alike(stage: str, small: Splits) -> None:
    """The CPU keeps the fused kernel's backprop, bit for bit on a rerun; the GPU's dense loss,
    forced on the CPU, trains to the same losses within float32 rounding.

    When the dense loss came in, the CPU's losses and weights were compared once with the code
    before it (every stage, 2 epochs, XLA, plain graph and parity): bit-identical.
    """
    first, second = train_on_cpu(stage, small), train_on_cpu(stage, small)
    assert first.tobytes() == second.tobytes()
    dense = train_on_cpu(stage, small, DENSE)
    assert np.isfinite(first).all()
    np.testing.assert_allclose(dense, first, rtol=1e-5)


def test_the_peak_timing_covers_the_products() -> None:
    # Bounds that hold on any machine: positive and finite, and below 100 TFLOP/s, which no
    # CPU reaches; a clock that stopped before the products ran would read far beyond it.
    backend = tfb.TensorFlowBackend("cpu", Options(data_dir="", threads=2))
    seconds = backend.matmul_seconds(2048, 3)
    assert seconds > 0.0 and math.isfinite(seconds)
    assert 2.0 * 2048**3 * 3 / seconds < 1e14
    peak = measure_peak("tensorflow", "cpu", peak_options("cpu", Options(data_dir="", threads=2)))
    assert 0.0 < peak < 1e5  # GFLOP/s


def run_fresh(code: str) -> str:
    """Run `code` in a new Python process: TF's GPU settings hold from its runtime's start, and
    an earlier CPU backend in this process has hidden the GPUs from TF for good."""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.splitlines()[-1]


@pytest.mark.gpu
def test_tensorflow_and_torch_gpu_peaks_agree() -> None:
    skip_without_gpu("tensorflow", "gpu")
    skip_without_gpu("torch", "gpu")
    code = (
        "import json; from bench.core.options import Options;"
        " from bench.execution.peaks import measure_peak, peak_options;"
        " options = peak_options('gpu', Options(data_dir='', threads=2));"
        " print(json.dumps([measure_peak(b, 'gpu', options) for b in ('tensorflow', 'torch')]))"
    )
    tf_peak, torch_peak = json.loads(run_fresh(code))
    assert abs(tf_peak / torch_peak - 1.0) < 0.15, (tf_peak, torch_peak)


@pytest.mark.gpu
def test_torch_can_allocate_after_a_tensorflow_gpu_backend(data_dir: Path) -> None:
    skip_without_gpu("tensorflow", "gpu")
    skip_without_gpu("torch", "gpu")
    code = f"""
from pathlib import Path

import torch
from backends.tensorflow import TensorFlowBackend
from bench.core.options import Options
from bench.core.data import load_dataset
from bench.core.datasets.mnist import MNIST
from bench.core.seeding import seeded_run
from bench.core.spec import load_stage, with_epochs
from tests.conftest import subset

splits = subset(load_dataset(MNIST, Path({str(data_dir)!r}), download=False), n_train=300)
spec = with_epochs(load_stage("adam"), 1)
backend = TensorFlowBackend("gpu", Options(data_dir="", threads=2))
backend.load_data(splits)
run = seeded_run(spec, 0, 300)
backend.build(spec, run)
backend.train_epoch(run.epoch_orders[0])
block = torch.ones(2**28, device="cuda")  # 1 GiB of float32
torch.cuda.synchronize()
print(backend.environment()["gpu_memory_growth"], block.numel() * block.element_size())
"""
    growth, allocated = run_fresh(code).split()
    assert growth == "true"
    assert int(allocated) == 2**30
