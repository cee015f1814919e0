"""Shared fixtures: the MNIST folder, installed backends, small real datasets."""

from __future__ import annotations

import hashlib
import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from backends import BACKENDS, is_installed, load_backend
from bench.core.data import DATA_DIR_ENV, Splits, load_dataset
from bench.core.datasets.dataset import DataFile, Dataset
from bench.core.datasets.fashion_mnist import FASHION_MNIST
from bench.core.datasets.mnist import MNIST
from bench.execution.environments import Environment, ensure

ROOT = Path(__file__).resolve().parents[1]
SHARED_MNIST = ROOT.parent / "shared" / "data" / "mnist"


# Fashion-MNIST's four files: MLP_BENCH_FASHION_DIR, else where Debian's dataset-fashion-mnist
# package puts them (.ci/run installs it).
FASHION_DIR_ENV = "MLP_BENCH_FASHION_DIR"
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
# The time gzip stored in Zalando's published files, which Debian's copies leave out.
_ZALANDO_GZIP_MTIME = {"train": 0x59A7E9DE, "t10k": 0x59A7E9F3}
# The digest of Fashion-MNIST's four parsed arrays (a cell's data_sha256).
FASHION_DATA_SHA256 = "7edab79937c792778f9c3888f4b3971a8f29015ca8da937c846ff06f7cd37e89"


def pytest_configure(config: pytest.Config) -> None:
    """Subnormals flushed on the main thread before any test starts PyTorch's thread pool, as
    in a cell's process, where the torch backend is the first PyTorch work: the pool's threads
    inherit the setting only when they start after it, and the backend refuses a pool that
    started without it (a test of PyTorch's own layers would otherwise decide, by running
    first, whether later tests can build a torch backend)."""
    if is_installed("torch"):
        import torch

        torch.set_flush_denormal(True)


def mnist_dir() -> Path:
    """Where the tests read MNIST: MLP_BENCH_DATA_DIR, else ../shared/data/mnist."""
    return Path(os.environ.get(DATA_DIR_ENV) or SHARED_MNIST)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = mnist_dir()
    if not (path / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"MNIST not found in {path}; set {DATA_DIR_ENV}")
    return path


@pytest.fixture(scope="session")
def mnist(data_dir: Path) -> Splits:
    return load_dataset(MNIST, data_dir, download=False)


@pytest.fixture(scope="session")
def fashion_dir() -> Path:
    """The folder of Fashion-MNIST's four files (published or Debian's copies); skip if absent."""
    path = Path(os.environ.get(FASHION_DIR_ENV) or DEBIAN_FASHION)
    if not all((path / f.name).is_file() for f in FASHION_MNIST.files):
        pytest.skip(f"Fashion-MNIST not found in {path}; apt-get install dataset-fashion-mnist")
    return path


@pytest.fixture(scope="session")
def both_data_dir(
    data_dir: Path, fashion_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A data dir holding both data sets, each in its own folder (links to the real ones)."""
    root = tmp_path_factory.mktemp("data")
    (root / MNIST.name).symlink_to(data_dir.resolve())
    (root / FASHION_MNIST.name).symlink_to(fashion_dir.resolve())
    return root


def published_bytes(path: Path, spec: DataFile) -> bytes:
    """The published file's bytes from a copy of it: the copy itself, or, from Debian's (which
    strips gzip's stored name and time, nothing else), the published header put back."""
    raw = path.read_bytes()
    if spec.accepts(hashlib.sha256(raw).hexdigest()) and len(raw) != spec.size:
        mtime = _ZALANDO_GZIP_MTIME[spec.name.split("-")[0]]
        name = spec.name.removesuffix(".gz").encode()
        # FLG.FNAME set, the time, XFL 0, OS 3 (Unix), the name; then the same deflate stream.
        raw = (
            b"\x1f\x8b\x08\x08"
            + mtime.to_bytes(4, "little")
            + b"\x00\x03"
            + name
            + b"\x00"
            + raw[10:]
        )
    return raw


def source_dir(dataset: Dataset, request: pytest.FixtureRequest) -> Path:
    """The folder of the real files of dataset (its fixture skips when they are absent)."""
    name = "data_dir" if dataset is MNIST else "fashion_dir"
    return Path(request.getfixturevalue(name))


def plant_cache_entry(entry: Path, array: np.ndarray) -> None:
    """Overwrite a parsed-array cache entry with array and the digest that matches it: what no
    check can tell from a sound entry (the data digest a cell records shows it)."""
    from bench.core.data import _array_sha256, _Parsed, _store_cached

    _store_cached(entry, _Parsed(array, _array_sha256(array)))


def subset(splits: Splits, n_train: int, n_eval: int = 1000) -> Splits:
    """A small slice of the real data, for fast backend tests."""
    return Splits(
        train_x=splits.train_x[:n_train],
        train_y=splits.train_y[:n_train],
        val_x=splits.val_x[:n_eval],
        val_y=splits.val_y[:n_eval],
        test_x=splits.test_x[:n_eval],
        test_y=splits.test_y[:n_eval],
    )


def backend_params() -> list[object]:
    """Every registered backend; one whose framework is missing is skipped, not failed."""
    return [
        pytest.param(
            name,
            marks=pytest.mark.skipif(not is_installed(name), reason=f"{name} not installed"),
        )
        for name in BACKENDS
    ]


def gpu_available(backend: str) -> bool:
    """Whether the backend's framework sees a GPU (its own visible_gpus, as the harness asks)."""
    return load_backend(backend).visible_gpus() > 0


def device_params() -> list[object]:
    return ["cpu", pytest.param("gpu", marks=pytest.mark.gpu)]


def skip_without_gpu(backend: str, device: str) -> None:
    if device == "gpu" and not gpu_available(backend):
        pytest.skip(f"no GPU visible to {backend}")
    if device == "gpu" and backend == "tensorflow":
        import tensorflow as tf

        # A TensorFlow CPU backend hides the GPUs for the rest of its process.
        if not tf.config.get_visible_devices("GPU"):
            pytest.skip("an earlier CPU backend in this process hid TensorFlow's GPUs")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """One PostgreSQL-backed `bench server` for the session's server and Ray tests (each
    starts in ~10-40 s): its URI and its folder (artifacts under folder/artifacts)."""
    from tests.services import tracking_server

    folder = tmp_path_factory.mktemp("server")
    with tracking_server(folder) as uri:
        yield uri, folder


@pytest.fixture(scope="session")
def real_dir(data_dir: Path) -> Path:
    """The read-only folder with the four original files (conftest's: MLP_BENCH_DATA_DIR, else
    ../shared/data/mnist); skip if it is not there."""
    if not all((data_dir / f.name).is_file() for f in MNIST.files):
        pytest.skip(f"real MNIST files not found in {data_dir}")
    return data_dir


@pytest.fixture(scope="module")
def mirror(real_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real HTTP server: /good/ has the real MNIST files, /bad/ corrupted copies, /empty/
    none."""
    yield from serving_mirror(MNIST, real_dir, tmp_path_factory)


def serving_mirror(
    dataset: Dataset, source: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A real HTTP server of dataset's published files: /good/, /bad/ (corrupted), /empty/."""
    root = tmp_path_factory.mktemp("www")
    good, bad = root / "good", root / "bad"
    good.mkdir()
    bad.mkdir()
    (root / "empty").mkdir()
    for f in dataset.files:
        raw = bytearray(published_bytes(source / f.name, f))
        (good / f.name).write_bytes(bytes(raw))
        # Same size, one byte flipped in the middle: only the checksum can tell.
        raw[len(raw) // 2] ^= 0xFF
        (bad / f.name).write_bytes(bytes(raw))

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    handler = partial(QuietHandler, directory=str(root))
    yield from serving(http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler))


def serving(server: http.server.ThreadingHTTPServer) -> Iterator[str]:
    """Serve on a thread, yield the server's URL, and stop it when the fixture ends."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


JAX_PINS = ("jax==0.10.2", "jaxlib==0.10.2")


@pytest.fixture(scope="session")
def jax_environment(tmp_path_factory: pytest.TempPathFactory) -> Environment:
    """One environment (jax 0.10.2 from the package index), made once for the session, as
    making one takes most of a minute; its folder is the session's environment root. Beside it,
    a building folder left by a process that was killed, which making it must clear away."""
    root = tmp_path_factory.mktemp("envs")
    (root / f".building-000000000000-{_dead_pid()}" / "bin").mkdir(parents=True)
    return ensure(JAX_PINS, name="jax 0.10", root=root)


def _dead_pid() -> int:
    """The id of a process that has ended."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.fixture(scope="session")
def every_backend_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[str, Path, subprocess.CompletedProcess[str]]:
    """One real two-epoch `bench run` on every installed backend (live.two_epoch_run), into a
    store of its own: (its URI, its folder, the finished command).
    The report and UI tests read the same run (each module once trained its own, ~30-50 s on
    CI). A test changes only a copy of it; `bench report` records the same report again."""
    from tests.live import PATIENCE_S, two_epoch_run

    folder = tmp_path_factory.mktemp("every-backend")
    uri = f"sqlite:///{folder}/mlflow.db"
    done = subprocess.run(
        two_epoch_run(uri), cwd=ROOT, capture_output=True, text=True, timeout=PATIENCE_S
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return uri, folder, done
