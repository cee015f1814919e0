"""The reference the backends are measured against: the same model trained with Keras 3
`model.fit`, on the Keras backend of each framework (TensorFlow, PyTorch, JAX).

Not a backend: it only reports throughput (samples/s of the steady epochs), so that the harness
can show how far each of its training loops is from its own framework's stock high-level path.
Keras chooses its backend once, when it is imported, so each backend's reference runs in a
process of its own, whose environment is set here before Keras is imported (`keras_fit`).
This module imports no framework: the parent process reads its registry and `KerasFit`.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterable
from dataclasses import replace

from backends import is_installed
from backends.keras_measured import KerasFit
from bench.core.data import Splits
from bench.core.options import Options
from bench.core.seeding import SeededRun
from bench.core.spec import StageSpec

# The harness's backend -> the Keras backend that runs on the same framework. A backend that
# is not here has no Keras reference: its cells show "-" against Keras.
KERAS_BACKENDS: dict[str, str] = {"tensorflow": "tensorflow", "torch": "torch", "jax": "jax"}

# Frameworks that read the environment set below once, at import or when their runtime starts.
_READ_AT_IMPORT = ("keras", "tensorflow", "torch", "jax")


def keras_installed() -> bool:
    """Whether Keras can be imported (checked without importing it, or any framework)."""
    return importlib.util.find_spec("keras") is not None


def keras_label(backend: str) -> str:
    """How tables and messages name a backend's reference: `keras/torch`."""
    return f"keras/{KERAS_BACKENDS[backend]}"


def reference_backends(backends: Iterable[str]) -> list[str]:
    """Those of `backends` that have a Keras backend and whose framework is installed."""
    return [name for name in backends if name in KERAS_BACKENDS and is_installed(name)]


def select_backend(backend: str, device: str, options: Options) -> None:
    """Set this process's environment for Keras on `backend` and `device`: Keras reads
    KERAS_BACKEND when imported, JAX its platforms when imported, CUDA its visible devices
    and XLA its thread pool when their runtime starts."""
    imported = [name for name in _READ_AT_IMPORT if name in sys.modules]
    if imported:
        raise RuntimeError(f"{', '.join(imported)} already imported: too late to choose")
    os.environ["KERAS_BACKEND"] = KERAS_BACKENDS[backend]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if device == "cpu":
        # Left alone, Keras on every framework takes a GPU wherever there is one, even as the
        # baseline of CPU cells; hidden from CUDA, none of them can.
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        if backend == "jax":
            os.environ["JAX_PLATFORMS"] = "cpu"  # else JAX warns that CUDA failed to start
    if backend == "jax":
        from backends.jax import configure_runtime

        # The cells' thread pool; no determinism flag, as Keras's stock path has none (nor
        # has the TensorFlow reference op determinism).
        configure_runtime(options.threads, replace(options, nondeterministic=True))


def keras_fit_samples_per_s(
    backend: str,
    spec: StageSpec,
    run: SeededRun,
    splits: Splits,
    options: Options,
    device: str,
) -> KerasFit:
    """Median samples/s over the epochs after the first of `model.fit` (SGD, the same
    weights) with Keras on `backend`, on the threads and for the epochs of `options`; the
    process must not have imported Keras yet."""
    select_backend(backend, device, options)
    from backends.keras_fit import fit  # imports Keras, on the backend just selected

    return fit(KERAS_BACKENDS[backend], spec, run, splits, options, device)
