"""Tests for bench.core.data on the real MNIST files, with a real local HTTP server for
downloads (the machinery is generic; MNIST is the registered data set it is tested on)."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from bench.core import data
from bench.core.datasets.dataset import Dataset
from bench.core.datasets.fashion_mnist import FASHION_MNIST
from bench.core.datasets.idx import read_idx, write_idx
from bench.core.datasets.mnist import MNIST
from bench.core.errors import BenchError
from tests.conftest import (
    FASHION_DATA_SHA256,
    plant_cache_entry,
    published_bytes,
    serving,
    serving_mirror,
    source_dir,
)

TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
SMALL = "t10k-labels-idx1-ubyte.gz"  # the smallest file, for cheap corruption tests
# The digest of the four parsed arrays of the real files: a parser that reads them differently
# changes it.
MNIST_DATA_SHA256 = "2fc903ffb3afda6e73a0d94c150d365b1e58bceedc6c4f0b647c597abcef298d"


def _assert_one_line_naming(exc: BenchError, *needles: str) -> str:
    """The message is one line and mentions every needle; returns it."""
    msg = str(exc)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"
    return msg


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def _module_cache(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ensure_files parses into the cache too: keep it in this module's folder, not ~/.cache."""
    monkeypatch.setenv(data.CACHE_DIR_ENV, str(cache_dir))


@pytest.fixture(scope="module")
def splits(real_dir: Path, cache_dir: Path) -> data.Splits:
    return data.load_dataset(MNIST, real_dir, cache_dir=cache_dir, download=False)


@pytest.fixture
def closed_port_url() -> str:
    """A URL on a local port with nothing listening: connection refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep a proxy from the environment away from the local test server."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module", params=[MNIST, FASHION_MNIST], ids=lambda d: d.name)
def any_mirror(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Dataset, str]]:
    """A real HTTP server of each data set's published files, as conftest's mirror."""
    dataset = request.param
    for url in serving_mirror(dataset, source_dir(dataset, request), tmp_path_factory):
        yield dataset, url


def _assert_real_files(folder: Path, dataset: Dataset = MNIST) -> None:
    for f in dataset.files:
        raw = (folder / f.name).read_bytes()
        assert len(raw) == f.size
        assert hashlib.sha256(raw).hexdigest() == f.sha256
        assert hashlib.md5(raw, usedforsecurity=False).hexdigest() == f.md5


def write_gzip_bomb(path: Path, header: bytes, mebibytes: int) -> None:
    """A real gzip bomb: header, then `mebibytes` MiB of zeros, in about 1 kB per MiB. Written
    as repeats of one compressed MiB (gzip members concatenate), so in milliseconds."""
    member = gzip.compress(bytes(1 << 20), compresslevel=9)
    path.write_bytes(gzip.compress(header) + member * mebibytes)


def _leftovers(folder: Path) -> list[str]:
    """Names in folder that are not finished files (temp files, partials)."""
    names = {f.name for f in MNIST.files}
    return sorted(p.name for p in folder.iterdir() if p.name not in names)


# --- the published facts --------------------------------------------------------


def test_file_table_matches_shipped_checksums(real_dir: Path) -> None:
    _assert_real_files(real_dir)
    if not (real_dir / "SHA256SUMS").is_file():
        pytest.skip(f"no SHA256SUMS beside the files in {real_dir}")
    lines = (real_dir / "SHA256SUMS").read_text().splitlines()
    sums = {name: sha for sha, name in (line.split() for line in lines)}
    assert {f.name: f.sha256 for f in MNIST.files} == sums


# --- loading the real files -----------------------------------------------------


def test_split_shapes_and_dtypes(splits: data.Splits) -> None:
    assert splits.sizes == {"train": 55000, "val": 5000, "test": 10000}
    for x, n in ((splits.train_x, 55000), (splits.val_x, 5000), (splits.test_x, 10000)):
        assert x.shape == (n, 784)
        assert x.dtype == np.float32
        assert float(x.min()) == 0.0
        assert float(x.max()) == 1.0
    for y, n in ((splits.train_y, 55000), (splits.val_y, 5000), (splits.test_y, 10000)):
        assert y.shape == (n,)
        assert y.dtype == np.int64


def test_split_contents(splits: data.Splits) -> None:
    # Validation is the FIRST 5,000 training images, so it starts with the famous 5.
    assert splits.val_y[0] == 5
    assert splits.test_y[0] == 7
    all_train = np.concatenate([splits.val_y, splits.train_y])
    assert np.bincount(all_train, minlength=10).tolist() == TRAIN_COUNTS
    assert np.bincount(splits.test_y, minlength=10).tolist() == TEST_COUNTS
    # Pixel statistics from the README (pixels / 255).
    all_x = np.concatenate([splits.val_x, splits.train_x])
    assert abs(float(all_x.mean(dtype=np.float64)) - 0.130660) < 1e-5
    assert abs(float(splits.test_x.mean(dtype=np.float64)) - 0.132515) < 1e-5


def test_scaling_is_divide_by_255(real_dir: Path, splits: data.Splits) -> None:
    raw = read_idx(real_dir / "t10k-images-idx3-ubyte.gz", 10000 * 28 * 28)
    assert raw.shape == (10000, 28, 28)
    assert raw.dtype == np.uint8
    expected = raw.reshape(10000, 784).astype(np.float32) / np.float32(255)
    np.testing.assert_array_equal(splits.test_x, expected)
    labels = read_idx(real_dir / "t10k-labels-idx1-ubyte.gz", 10000)
    assert labels.shape == (10000,)


# --- the parsed-array cache -----------------------------------------------------


def test_cache_is_written_and_reused(
    real_dir: Path, cache_dir: Path, splits: data.Splits, caplog: pytest.LogCaptureFixture
) -> None:
    cached = sorted(cache_dir.glob("*.npy"))
    assert len(cached) == 4
    # Keyed by the file's sha256, so a different source file can never hit.
    for f in MNIST.files:
        assert any(f.sha256 in p.name for p in cached)
    # Beside each array, its digest; nothing else (no temp files).
    digests = sorted(p.name for p in cache_dir.iterdir() if p.suffix != ".npy")
    assert digests == [p.name + ".sha256" for p in cached]

    again = data.load_dataset(MNIST, real_dir, cache_dir=cache_dir, download=False)
    for field in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y"):
        np.testing.assert_array_equal(getattr(again, field), getattr(splits, field))
    assert again.sha256 == splits.sha256 == MNIST_DATA_SHA256
    assert "rebuilding" not in caplog.text  # a sound cache is used as it is


def _rebuild_warning(caplog: pytest.LogCaptureFixture, entry: Path) -> str:
    """The one warning line that says entry was rebuilt; fails if there is none."""
    [line] = [r.getMessage() for r in caplog.records if "rebuilding" in r.getMessage()]
    assert str(entry) in line and "\n" not in line
    return line


def test_planted_cache_entry_is_rebuilt(
    real_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A cached test-labels array replaced by zeros of the right shape gave
    "did-not-learn 10.24%". It must fail its digest, be rebuilt, and say so."""
    data.load_dataset(MNIST, real_dir, cache_dir=tmp_path, download=False)
    (entry,) = tmp_path.glob("mnist-t10k-labels*.npy")
    np.save(entry, np.zeros(10000, dtype=np.uint8))
    with caplog.at_level(logging.WARNING, logger="bench"):
        loaded = data.load_dataset(MNIST, real_dir, cache_dir=tmp_path, download=False)
    assert np.bincount(loaded.test_y, minlength=10).tolist() == TEST_COUNTS
    assert loaded.sha256 == MNIST_DATA_SHA256
    assert "does not match its digest" in _rebuild_warning(caplog, entry)
    assert np.bincount(np.load(entry), minlength=10).tolist() == TEST_COUNTS  # rewritten


def test_flipped_bit_in_cache_is_rebuilt_before_training(
    real_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One flipped bit in the cached training images made `reproduce` say "bit-identical: NO"
    with nothing to blame. ensure_files (what the commands run before training) finds it."""
    data.load_dataset(MNIST, real_dir, cache_dir=tmp_path, download=False)
    (entry,) = tmp_path.glob("mnist-train-images*.npy")
    raw = bytearray(entry.read_bytes())
    raw[-1000] ^= 0x01
    entry.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING, logger="bench"):
        data.ensure_files(MNIST, real_dir, download=False, cache_dir=tmp_path)
    _rebuild_warning(caplog, entry)
    caplog.clear()
    loaded = data.load_dataset(MNIST, real_dir, cache_dir=tmp_path, download=False)
    assert loaded.sha256 == MNIST_DATA_SHA256 and not caplog.records  # rebuilt once, sound now


def test_cache_entry_without_digest_is_rebuilt(
    real_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data.load_dataset(MNIST, real_dir, cache_dir=tmp_path, download=False)
    (digest,) = tmp_path.glob("mnist-train-labels*.npy.sha256")
    digest.unlink()
    with caplog.at_level(logging.WARNING, logger="bench"):
        loaded = data.load_dataset(MNIST, real_dir, cache_dir=tmp_path, download=False)
    assert "has no digest" in _rebuild_warning(caplog, digest.with_suffix(""))
    assert loaded.val_y[0] == 5 and digest.is_file()


def test_a_consistent_planted_cache_changes_the_data_digest(real_dir: Path, tmp_path: Path) -> None:
    """An array planted together with a matching digest passes the check (nothing can tell it
    from a sound entry), but the data digest a cell records then differs: reproduce names it."""
    data.load_dataset(MNIST, real_dir, cache_dir=tmp_path, download=False)
    (entry,) = tmp_path.glob("mnist-t10k-labels*.npy")
    plant_cache_entry(entry, np.zeros(10000, dtype=np.uint8))
    loaded = data.load_dataset(MNIST, real_dir, cache_dir=tmp_path, download=False)
    assert set(loaded.test_y) == {0}
    assert loaded.sha256 != MNIST_DATA_SHA256


def test_broken_cache_entry_is_rebuilt(real_dir: Path, tmp_path: Path) -> None:
    data.load_dataset(MNIST, real_dir, cache_dir=tmp_path, download=False)
    (entry,) = tmp_path.glob("mnist-t10k-labels*.npy")
    entry.write_bytes(b"not a numpy file")
    (wrong_shape,) = tmp_path.glob("mnist-train-labels*.npy")
    np.save(wrong_shape, np.zeros(7, dtype=np.uint8))
    again = data.load_dataset(MNIST, real_dir, cache_dir=tmp_path, download=False)
    assert again.test_y[0] == 7
    assert again.val_y[0] == 5
    assert np.load(entry).shape == (10000,)  # rewritten with the real data


def test_unwritable_cache_dir_is_not_an_error(real_dir: Path, tmp_path: Path) -> None:
    # A path under a regular file can never be created, even as root.
    blocker = tmp_path / "file"
    blocker.write_text("x")
    loaded = data.load_dataset(MNIST, real_dir, cache_dir=blocker / "cache", download=False)
    assert loaded.val_y[0] == 5


def test_cache_dir_from_env(
    real_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(data.CACHE_DIR_ENV, str(tmp_path / "envcache"))
    data.load_dataset(MNIST, real_dir, download=False)
    assert len(list((tmp_path / "envcache").glob("*.npy"))) == 4


# --- downloading ----------------------------------------------------------------


def test_download_into_empty_dir(any_mirror: tuple[Dataset, str], tmp_path: Path) -> None:
    """Into the data set's own folder of the data dir, which is created."""
    dataset, mirror = any_mirror
    target = tmp_path / dataset.name
    paths = data.ensure_files(dataset, tmp_path, [mirror + "good/"], timeout=10)
    assert paths == {f.name: target / f.name for f in dataset.files}
    _assert_real_files(target, dataset)
    assert _leftovers(target) == [] and [p.name for p in tmp_path.iterdir()] == [dataset.name]
    # Present and verified now: a second call must not touch the network.
    assert data.ensure_files(dataset, tmp_path, [], download=True) == paths


def test_load_mnist_downloads_into_the_default_dir(
    mirror: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default folder is the one folder created when missing."""
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    loaded = data.load_dataset(MNIST, mirrors=[mirror + "good"], cache_dir=tmp_path / "c")
    assert loaded.sizes == {"train": 55000, "val": 5000, "test": 10000}
    assert loaded.val_y[0] == 5
    _assert_real_files(tmp_path / "home" / ".cache" / "mlp-bench" / "mnist")


def test_fallback_past_dead_and_404_mirrors(
    mirror: str, closed_port_url: str, tmp_path: Path
) -> None:
    mirrors = [closed_port_url, mirror + "empty/", mirror + "good/"]
    data.ensure_files(MNIST, tmp_path, mirrors, timeout=10)
    _assert_real_files(tmp_path / "mnist")
    assert _leftovers(tmp_path / "mnist") == []


def test_corrupt_mirror_is_skipped(any_mirror: tuple[Dataset, str], tmp_path: Path) -> None:
    dataset, mirror = any_mirror
    data.ensure_files(dataset, tmp_path, [mirror + "bad/", mirror + "good/"], timeout=10)
    _assert_real_files(tmp_path / dataset.name, dataset)
    assert _leftovers(tmp_path / dataset.name) == []


def test_only_bad_mirrors_raise_naming_the_file(
    mirror: str, closed_port_url: str, tmp_path: Path
) -> None:
    bad = mirror + "bad/"
    with pytest.raises(BenchError) as info:
        data.ensure_files(MNIST, tmp_path, [closed_port_url, mirror + "empty/", bad], timeout=10)
    first = MNIST.files[0]
    msg = _assert_one_line_naming(
        info.value, first.name, first.sha256, closed_port_url, bad, "HTTP 404"
    )
    assert "sha256 mismatch" in msg
    # Nothing half-written under a final name, no temp files, not even the folder it made.
    assert list(tmp_path.iterdir()) == []


def test_no_mirrors_at_all(tmp_path: Path) -> None:
    with pytest.raises(BenchError) as info:
        data.ensure_files(MNIST, tmp_path, [])
    _assert_one_line_naming(info.value, MNIST.files[0].name, "by hand")


def test_uncreatable_default_data_dir(
    mirror: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A path under a regular file can never be created, even as root.
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("HOME", str(blocker))
    default = data.default_data_dir(MNIST)
    with pytest.raises(BenchError) as info:
        data.ensure_files(MNIST, default.parent, [mirror + "good/"])
    _assert_one_line_naming(info.value, "cannot create", str(default), data.DATA_DIR_ENV)


class _Trickle(http.server.BaseHTTPRequestHandler):
    """A mirror that announces the right size, then sends a zero byte every 50 ms, forever."""

    def do_GET(self) -> None:
        spec = next(f for f in MNIST.files if self.path.endswith(f.name))
        self.send_response(200)
        self.send_header("Content-Length", str(spec.size))
        self.end_headers()
        try:
            for _ in range(spec.size):
                self.wfile.write(b"\0")
                time.sleep(0.05)
        except OSError:
            pass  # the client gave up: what the test wants

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def trickle() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Trickle)
    server.daemon_threads = True
    yield from serving(server)


def test_trickling_mirror_is_given_up_after_the_transfer_limit(
    real_dir: Path, trickle: str, mirror: str, tmp_path: Path
) -> None:
    """The timeout bounded each read, so a byte every second (here every
    50 ms) held the download forever. transfer_timeout bounds the file; the next mirror wins."""
    _copy_real(real_dir, tmp_path)
    (tmp_path / SMALL).unlink()
    started = time.monotonic()
    with pytest.raises(BenchError) as info:
        data.ensure_files(MNIST, tmp_path, [trickle], timeout=30, transfer_timeout=1)
    _assert_one_line_naming(info.value, SMALL, trickle, "too slow", "1 s allowed")
    assert time.monotonic() - started < 60  # generous; without the limit it never returns
    assert _leftovers(tmp_path) == []

    data.ensure_files(MNIST, tmp_path, [trickle, mirror + "good/"], timeout=30, transfer_timeout=1)
    _assert_real_files(tmp_path)
    assert _leftovers(tmp_path) == []


def test_default_transfer_limit_is_generous() -> None:
    """A few minutes for the 9.9 MB file (at least 50 kB/s), a minute or more for any."""
    budgets = {f.name: data._transfer_budget(f) for f in MNIST.files}
    assert 180 < budgets["train-images-idx3-ubyte.gz"] < 600
    assert min(budgets.values()) >= 60


def test_present_corrupt_file_is_never_overwritten(mirror: str, tmp_path: Path) -> None:
    victim = tmp_path / SMALL
    victim.write_bytes(b"user data")
    with pytest.raises(BenchError):
        data.ensure_files(MNIST, tmp_path, [mirror + "good/"])
    assert victim.read_bytes() == b"user data"


# --- local files that are wrong or missing --------------------------------------


def _copy_real(real_dir: Path, dest: Path) -> None:
    for f in MNIST.files:
        shutil.copyfile(real_dir / f.name, dest / f.name)


def test_flipped_byte_is_detected(real_dir: Path, tmp_path: Path) -> None:
    _copy_real(real_dir, tmp_path)
    raw = bytearray((tmp_path / SMALL).read_bytes())
    raw[100] ^= 0x01
    (tmp_path / SMALL).write_bytes(bytes(raw))
    spec = next(f for f in MNIST.files if f.name == SMALL)
    with pytest.raises(BenchError) as info:
        data.ensure_files(MNIST, tmp_path, download=False)
    _assert_one_line_naming(
        info.value, str(tmp_path / SMALL), spec.sha256, "delete", data.DATA_DIR_ENV
    )


def test_truncated_file_is_detected(real_dir: Path, tmp_path: Path) -> None:
    _copy_real(real_dir, tmp_path)
    name = "train-labels-idx1-ubyte.gz"
    with (tmp_path / name).open("r+b") as fh:
        fh.truncate(1000)
    with pytest.raises(BenchError) as info:
        data.load_dataset(MNIST, tmp_path, cache_dir=tmp_path / "c", download=False)
    _assert_one_line_naming(info.value, str(tmp_path / name), "1000 bytes")


def test_missing_file_without_download(real_dir: Path, tmp_path: Path) -> None:
    _copy_real(real_dir, tmp_path)
    (tmp_path / SMALL).unlink()
    with pytest.raises(BenchError) as info:
        data.ensure_files(MNIST, tmp_path, download=False)
    msg = _assert_one_line_naming(info.value, SMALL, str(tmp_path), "--data-dir")
    assert data.DATA_DIR_ENV in msg


def test_empty_dir_without_download_names_all_files(tmp_path: Path) -> None:
    with pytest.raises(BenchError) as info:
        data.load_dataset(MNIST, tmp_path, download=False)
    _assert_one_line_naming(info.value, *(f.name for f in MNIST.files))


@pytest.mark.parametrize("download", [True, False], ids=["download", "no-download"])
def test_mistyped_data_dir_is_not_created(mirror: str, tmp_path: Path, download: bool) -> None:
    """A --data-dir that does not exist was created empty (and, offline,
    reported as missing files). Only the default folder may be created."""
    typo = tmp_path / "mnsit"
    with pytest.raises(BenchError) as info:
        data.ensure_files(MNIST, typo, [mirror + "good/"], download=download)
    msg = _assert_one_line_naming(info.value, str(typo), "does not exist", "--data-dir")
    assert ("mkdir -p" in msg) == download
    assert not typo.exists()


@pytest.mark.parametrize("download", [True, False], ids=["download", "no-download"])
def test_a_data_dir_behind_a_broken_link_says_so(
    mirror: str, tmp_path: Path, download: bool
) -> None:
    """A link to itself, or to nothing, was reported as missing, with the advice to
    mkdir -p it, which fails on a link. Say which it is, and to point it at the folder."""
    loop, dangling = tmp_path / "loop", tmp_path / "dangling"
    loop.symlink_to(loop)
    dangling.symlink_to(tmp_path / "nowhere")
    cases = {
        loop: "leads into a loop of symbolic links",
        loop / "mnist": "leads into a loop of symbolic links",
        dangling: f"is a symbolic link to {tmp_path / 'nowhere'}, which does not exist",
    }
    for folder, problem in cases.items():
        with pytest.raises(BenchError) as info:
            data.ensure_files(MNIST, folder, [mirror + "good/"], download=download)
        msg = _assert_one_line_naming(info.value, f"{folder} {problem}", "make the link point")
        assert "mkdir" not in msg and "check the path" not in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling", "loop"]


def test_a_looping_data_dir_from_the_environment_through_the_command(tmp_path: Path) -> None:
    (tmp_path / "loop").symlink_to("loop")
    done = subprocess.run(
        [sys.executable, "-m", "bench", "run", "--stage", "relu-xavier", "--epochs", "1"],
        cwd=tmp_path,
        env={**os.environ, data.DATA_DIR_ENV: "loop"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and done.stdout == "", done.stdout + done.stderr
    assert done.stderr.splitlines() == [
        "error: MNIST data dir loop leads into a loop of symbolic links; point --data-dir or "
        f"{data.DATA_DIR_ENV} at the folder that holds the MNIST files, or make the link point"
        " at it"
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["loop"]


def test_data_dir_that_is_a_file(tmp_path: Path) -> None:
    """Reported as "cannot create"; say what it is."""
    afile = tmp_path / "mnist.tar"
    afile.write_bytes(b"x")
    for download in (True, False):
        with pytest.raises(BenchError) as info:
            data.ensure_files(MNIST, afile, [], download=download)
        msg = _assert_one_line_naming(info.value, str(afile), "is a file, not a folder")
        assert "cannot create" not in msg


def test_another_data_sets_idx_file_is_not_called_corrupt(real_dir: Path, tmp_path: Path) -> None:
    """A valid IDX file of MNIST's name and shape (Fashion-MNIST) was called
    corrupt, with the advice to delete it. Say it is not the MNIST file, with both digests."""
    _copy_real(real_dir, tmp_path)
    labels = np.random.default_rng(0).integers(0, 10, 10000, dtype=np.uint8)
    write_idx(tmp_path / SMALL, labels)
    actual = hashlib.sha256((tmp_path / SMALL).read_bytes()).hexdigest()
    spec = next(f for f in MNIST.files if f.name == SMALL)
    with pytest.raises(BenchError) as info:
        data.ensure_files(MNIST, tmp_path, download=False)
    msg = _assert_one_line_naming(
        info.value, str(tmp_path / SMALL), "not the MNIST file", actual, spec.sha256, "10000"
    )
    assert "corrupt" not in msg and "delete" not in msg


# Runs the command given in its arguments and prints its exit code and peak memory (kB). A small
# parent of its own, because a child's peak counts its parent's memory at the fork, and the test
# process holds the MNIST arrays.
_PEAK_MEMORY = """
import os, subprocess, sys
child = subprocess.Popen(sys.argv[1:], stderr=subprocess.STDOUT)
_, status, usage = os.wait4(child.pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss, file=sys.stderr)
"""


def test_a_gzip_bomb_is_refused_in_bounded_memory(tmp_path: Path) -> None:
    """A 1 MB training-images file that expands to 256 MiB, its header claiming 10^11 bytes,
    was decompressed whole (3.2 GB of memory for a 3.1 MB file). Through the real command:
    refused in one line naming the file and the fix, in far less memory than it expands to."""
    bomb_dir = tmp_path / "bomb"
    bomb_dir.mkdir()
    bomb = bomb_dir / "train-images-idx3-ubyte.gz"
    dims = (100_000, 1_000, 1_000)
    write_gzip_bomb(bomb, b"".join(d.to_bytes(4, "big") for d in (0x803, *dims)), 256)
    run = ["run", "--stage", "relu-xavier", "--epochs", "1", "--data-dir", str(bomb_dir)]
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_MEMORY, sys.executable, "-m", "bench", *run],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    code, peak_kb = map(int, done.stderr.split())
    lines = done.stdout.splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: MNIST file {bomb} is corrupt"), lines
    assert "delete it to re-download it" in lines[0] and data.DATA_DIR_ENV in lines[0]
    assert peak_kb < 150 << 10  # the bomb expands to 256 MiB
    assert [p.name for p in tmp_path.iterdir()] == ["bomb"]


# --- where the data lives -------------------------------------------------------


def test_resolve_data_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    default = tmp_path / "home" / ".cache" / "mlp-bench"
    assert data.resolve_data_dir(None) == default
    assert data.resolve_data_dir("") == default
    assert data.default_data_dir(MNIST) == default / "mnist"

    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path / "from-env"))
    assert data.resolve_data_dir(None) == tmp_path / "from-env"

    assert data.resolve_data_dir(tmp_path / "from-cli") == tmp_path / "from-cli"
    assert data.resolve_data_dir(str(tmp_path / "cli-str")) == tmp_path / "cli-str"
    assert data.resolve_data_dir("~/x") == tmp_path / "home" / "x"

    monkeypatch.setenv(data.DATA_DIR_ENV, "")
    assert data.resolve_data_dir(None) == default


def test_load_mnist_uses_env_data_dir(
    real_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(data.DATA_DIR_ENV, str(real_dir))
    loaded = data.load_dataset(MNIST, cache_dir=tmp_path, download=False)
    assert loaded.test_y[0] == 7


def test_real_data_tests_run_where_only_the_variable_names_the_data(
    real_dir: Path, tmp_path: Path
) -> None:
    """These tests read ../shared/data/mnist only, so they skipped where the
    data was given by MLP_BENCH_DATA_DIR. Run some in a checkout with nothing beside it."""
    here = Path(__file__).parent
    checkout = tmp_path / "checkout"
    (checkout / "tests").mkdir(parents=True)
    for name in ("__init__.py", "conftest.py", "test_data.py"):
        shutil.copy(here / name, checkout / "tests" / name)
    selected = "split_shapes or flipped_byte_is_detected"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs", "-k", selected],
        cwd=checkout,
        env={**os.environ, data.DATA_DIR_ENV: str(real_dir), data.CACHE_DIR_ENV: str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout and "skipped" not in done.stdout, done.stdout


# --- two data sets in one data dir ----------------------------------------------


def test_fashion_table_matches_the_published_files(fashion_dir: Path) -> None:
    """Size, md5 (as Zalando publishes them) and sha256 of the published files, rebuilt from
    Debian's copies by their gzip header alone: the same compressed data, so the same arrays."""
    for f in FASHION_MNIST.files:
        raw = published_bytes(fashion_dir / f.name, f)
        assert len(raw) == f.size
        assert hashlib.md5(raw, usedforsecurity=False).hexdigest() == f.md5
        assert hashlib.sha256(raw).hexdigest() == f.sha256


def test_both_data_sets_load_from_one_data_dir(both_data_dir: Path, cache_dir: Path) -> None:
    assert data.ensure_data(str(both_data_dir), [MNIST, FASHION_MNIST]) == both_data_dir
    mnist = data.load_dataset(MNIST, both_data_dir, cache_dir=cache_dir, download=False)
    fashion = data.load_dataset(FASHION_MNIST, both_data_dir, cache_dir=cache_dir, download=False)
    assert (mnist.sha256, fashion.sha256) == (MNIST_DATA_SHA256, FASHION_DATA_SHA256)
    assert fashion.sizes == {"train": 55000, "val": 5000, "test": 10000}
    assert fashion.val_y[:5].tolist() == [9, 0, 0, 3, 0]  # the first training labels
    # Each data set's cache entries are named after it: the two share file names.
    names = sorted(p.name for p in cache_dir.glob("*.npy"))
    assert len(names) == 8 and sum(n.startswith("fashion-mnist-") for n in names) == 4


def test_a_flat_mnist_folder_is_still_read_beside_fashion(
    real_dir: Path, fashion_dir: Path, tmp_path: Path
) -> None:
    """MNIST's four files directly in the data dir, as MNIST-only folders hold them, and
    Fashion-MNIST in its own folder there."""
    for f in MNIST.files:
        (tmp_path / f.name).symlink_to(real_dir / f.name)
    (tmp_path / "fashion-mnist").symlink_to(fashion_dir)
    assert data.ensure_files(MNIST, tmp_path, download=False)[SMALL] == tmp_path / SMALL
    paths = data.ensure_files(FASHION_MNIST, tmp_path, download=False)
    assert paths[SMALL] == tmp_path / "fashion-mnist" / SMALL


@pytest.mark.parametrize(
    ("wanted", "found"), [(MNIST, FASHION_MNIST), (FASHION_MNIST, MNIST)], ids=lambda d: d.name
)
def test_another_data_sets_files_say_which_folder_they_belong_in(
    wanted: Dataset, found: Dataset, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Fashion-MNIST's files flat where MNIST's are looked for, or MNIST's flat folder given
    to a Fashion-MNIST stage: one line naming both data sets and each one's folder."""
    source = source_dir(found, request)
    for f in found.files:
        (tmp_path / f.name).symlink_to(source / f.name)
    with pytest.raises(BenchError) as info:
        data.ensure_files(wanted, tmp_path, download=False)
    msg = _assert_one_line_naming(
        info.value,
        f"{tmp_path / found.files[0].name} is {found.title}'s {found.files[0].name}, not"
        f" {wanted.title}'s",
        f"put {wanted.title}'s files in {tmp_path / wanted.name}/ and {found.title}'s in"
        f" {tmp_path / found.name}/",
    )
    assert "corrupt" not in msg


def test_a_file_where_a_data_sets_folder_belongs(tmp_path: Path) -> None:
    (tmp_path / "fashion-mnist").write_text("x")
    with pytest.raises(BenchError) as info:
        data.ensure_files(FASHION_MNIST, tmp_path, [])
    _assert_one_line_naming(
        info.value, f"Fashion-MNIST folder {tmp_path / 'fashion-mnist'} is a file, not a folder"
    )
