"""Data sets' files: locate, download, verify, parse and cache them, and cut the split.

Generic: what is particular to a data set (its files, checksums, mirrors, split, parser) is its
description in bench.core.datasets. Numpy and the standard library only, so that every backend
gets byte-identical inputs.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import logging
import os
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
import numpy.typing as npt

from bench.core.datasets import DATASETS
from bench.core.datasets.dataset import DATA_DIR_ENV, FIX_HINT
from bench.core.errors import BenchError, one_line

if TYPE_CHECKING:
    from bench.core.datasets.dataset import DataFile, Dataset, Rows

log = logging.getLogger(__name__)

CACHE_DIR_ENV = "MLP_BENCH_CACHE_DIR"
# The default data dir; each data set has its folder, named as it, in a data dir:
# ~/.cache/mlp-bench/mnist, ~/.cache/mlp-bench/fashion-mnist.
DEFAULT_DATA_ROOT = Path("~/.cache/mlp-bench")
DEFAULT_CACHE_DIR = Path("~/.cache/mlp-bench/parsed")

# Bumped whenever the cached array layout changes, so old caches are never read.
_CACHE_VERSION = 1
_CHUNK = 1 << 20
# The per-read timeout alone let a mirror that sends one byte a second hold a download for
# days, so each file's whole transfer is bounded too: a minute to connect and start, then at
# least 50 kB/s (0.4 Mbit/s), i.e. about 4.3 minutes for the 9.9 MB training images.
_TRANSFER_START_SECONDS = 60.0
_TRANSFER_MIN_BYTES_PER_S = 50_000
# Seconds a connect or a single read may take.
_READ_TIMEOUT = 30.0
_REPLACE_FIX = f"delete it to re-download it, or {FIX_HINT}"


def default_data_dir(dataset: Dataset) -> Path:
    """~/.cache/mlp-bench/<name>: the data set's folder in the default data dir."""
    return DEFAULT_DATA_ROOT.expanduser() / dataset.name


def resolve_data_dir(cli_value: str | Path | None) -> Path:
    """The data dir: the CLI value, else $MLP_BENCH_DATA_DIR, else ~/.cache/mlp-bench. An
    invocation reads all its stages' data sets from this one (Options.data_dir), each in its
    own folder there (dataset_dir)."""
    # An empty string (e.g. `--data-dir ""` or `VAR=`) means "not given", not the cwd.
    if cli_value is not None and str(cli_value) != "":
        return Path(cli_value).expanduser()
    env = os.environ.get(DATA_DIR_ENV, "")
    if env:
        return Path(env).expanduser()
    return DEFAULT_DATA_ROOT.expanduser()


def dataset_dir(data_dir: Path, dataset: Dataset) -> Path:
    """The data set's folder in a data dir: <data dir>/<name>/ when it is there; else the data
    dir itself when the data set's files lie in it directly (the flat layout of a folder of one
    data set, as MNIST's folders were before data sets had folders of their own); else
    <data dir>/<name>/, where missing files are downloaded."""
    data_dir = data_dir.expanduser()
    own = data_dir / dataset.name
    # lexists: a dangling link or a file in the folder's place is reported, not gone around.
    if os.path.lexists(own):
        return own
    if any(os.path.lexists(data_dir / spec.name) for spec in dataset.files):
        return data_dir
    return own


def ensure_data(
    cli_value: str | Path | None, datasets: Sequence[Dataset], *, download: bool = True
) -> Path:
    """The invocation's data dir (resolve_data_dir), with every data set's files verified in
    its folder there and their parsed-array cache sound (ensure_files), before any training."""
    data_dir = resolve_data_dir(cli_value)
    for dataset in {dataset.name: dataset for dataset in datasets}.values():
        ensure_files(dataset, data_dir, download=download)
    return data_dir


def resolve_cache_dir(cache_dir: Path | None) -> Path:
    """The parsed-array cache: the argument, else $MLP_BENCH_CACHE_DIR, else the default."""
    if cache_dir is not None:
        return cache_dir.expanduser()
    env = os.environ.get(CACHE_DIR_ENV, "")
    return Path(env).expanduser() if env else DEFAULT_CACHE_DIR.expanduser()


def _sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _verify_present(path: Path, spec: DataFile, dataset: Dataset) -> None:
    """Raise BenchError unless the file at path has the published size and sha256 (or a known
    repack's)."""
    title = dataset.title
    if not path.is_file():
        raise BenchError(f"{title} file {path} is not a regular file; remove it, or {FIX_HINT}")
    try:
        # Size first: it is free and catches the common truncated-download case.
        size = path.stat().st_size
        actual = _sha256_of(path) if spec.accepts_size(size) else ""
    except OSError as exc:
        raise BenchError(
            f"cannot read {title} file {path} ({one_line(exc)}); make it readable, or {FIX_HINT}"
        ) from exc
    if not spec.accepts(actual):
        raise BenchError(_why_not_it(path, spec, dataset, size, actual))


def _why_not_it(path: Path, spec: DataFile, dataset: Dataset, size: int, sha256: str) -> str:
    """Why a present file is not spec: another data set's valid file, or a damaged one.

    Telling them apart matters: "corrupt, delete it" is the wrong advice for Fashion-MNIST,
    which has MNIST's file names and shapes. Parsing costs ~0.4 s, on this error path only.
    """
    title = dataset.title
    other = _known_elsewhere(path, dataset, sha256)
    if other:
        return other
    try:
        shape = dataset.parse(path, spec.data_bytes).shape
    except BenchError:
        if size != spec.size:
            return (
                f"{title} file {path} is corrupt: {size} bytes, expected {spec.size} "
                f"(sha256 {spec.sha256}); {_REPLACE_FIX}"
            )
        return (
            f"{title} file {path} is corrupt: sha256 {sha256}, expected {spec.sha256}; "
            f"{_REPLACE_FIX}"
        )
    count, *side = shape
    what = f"{count} images of {'x'.join(map(str, side))}" if side else f"{count} labels"
    such_as = f", such as {dataset.confused_with}" if dataset.confused_with else ""
    return (
        f"{path} is a valid {dataset.file_format} file ({what}) but not the {title} file: "
        f"its sha256 is {sha256 or _sha256_of(path)}, {title}'s is {spec.sha256} (another data "
        f"set{such_as}?); put the original {title} file there, or {FIX_HINT}"
    )


def _known_elsewhere(path: Path, dataset: Dataset, sha256: str) -> str:
    """Why path is another registered data set's file, with where each data set belongs; ""
    when it is none of theirs."""
    sha256 = sha256 or _sha256_of(path)
    for other in DATASETS.values():
        if other.name == dataset.name or not any(f.accepts(sha256) for f in other.files):
            continue
        # The data dir: the folder's parent when the folder is the data set's own.
        data_dir = path.parent.parent if path.parent.name == dataset.name else path.parent
        return (
            f"{path} is {other.title}'s {path.name}, not {dataset.title}'s; each data set has"
            f" its own folder in the data dir: put {dataset.title}'s files in"
            f" {data_dir / dataset.name}/ and {other.title}'s in {data_dir / other.name}/"
        )
    return ""


class _WriteError(Exception):
    """A local write failed mid-download; not an OSError so mirror handling cannot eat it."""


def _download_one(
    url: str, dest: Path, spec: DataFile, title: str, timeout: float, transfer_timeout: float
) -> str | None:
    """Fetch url into dest atomically; return None on success, else why this mirror failed.

    Local write problems raise BenchError instead: no other mirror would fix them.
    """
    write_fix = f"make {dest.parent} writable, or point --data-dir or {DATA_DIR_ENV} elsewhere"
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{spec.name}.", suffix=".part", dir=dest.parent)
    except OSError as exc:
        raise BenchError(
            f"cannot write to {title} data dir {dest.parent} ({one_line(exc)}); {write_fix}"
        ) from exc
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            reason = _stream(url, out, spec, timeout, transfer_timeout)
            if reason is None:
                out.flush()
                # fsync before the rename so a crash cannot leave a short file
                # under the final name.
                os.fsync(out.fileno())
        if reason is None:
            # mkstemp creates 0600; a data file is not secret and may be shared.
            os.chmod(tmp, 0o644)
            os.replace(tmp, dest)
        return reason
    except (_WriteError, OSError) as exc:
        cause = exc.__cause__ if isinstance(exc, _WriteError) else exc
        raise BenchError(
            f"cannot write {dest} ({one_line(cause)}); free some space or {write_fix}"
        ) from exc
    finally:
        # On success the temp name is gone already; on any failure drop the partial file.
        tmp.unlink(missing_ok=True)


def _stream(
    url: str, out: BinaryIO, spec: DataFile, timeout: float, transfer_timeout: float
) -> str | None:
    """Copy url into out while hashing; return None if it matched spec, else the reason.

    timeout bounds the connect and each read; transfer_timeout the whole body, checked
    between reads, so a stalled mirror is given up after at most the sum of the two.
    """
    digest = hashlib.sha256()
    received = 0
    deadline = time.monotonic() + transfer_timeout
    request = urllib.request.Request(url, headers={"User-Agent": "mlp-bench"})
    try:
        with urllib.request.urlopen(request, timeout=min(timeout, transfer_timeout)) as resp:
            length = resp.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) != spec.size:
                return f"size {length}, expected {spec.size}"
            # read1, not read: read(n) waits for all n bytes, so a trickle of one byte per
            # read would never reach the deadline check.
            while chunk := resp.read1(_CHUNK):
                if time.monotonic() > deadline:
                    return (
                        f"too slow: {received} of {spec.size} bytes in the "
                        f"{transfer_timeout:g} s allowed for this file"
                    )
                received += len(chunk)
                # Stop early rather than fill the disk from a misbehaving server.
                if received > spec.size:
                    return f"more than the expected {spec.size} bytes"
                digest.update(chunk)
                try:
                    out.write(chunk)
                except OSError as exc:
                    raise _WriteError from exc
    except urllib.error.HTTPError as exc:
        exc.close()  # an HTTPError holds the open error response
        return f"HTTP {exc.code}"
    except urllib.error.URLError as exc:
        return one_line(exc.reason)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        # OSError: timeouts, resets, TLS errors; HTTPException: e.g. a cut-off body;
        # ValueError: a malformed mirror URL.
        return one_line(f"{type(exc).__name__}: {exc}")
    if received != spec.size:
        return f"got {received} bytes, expected {spec.size}"
    if digest.hexdigest() != spec.sha256:
        return f"sha256 mismatch (got {digest.hexdigest()})"
    return None


def _transfer_budget(spec: DataFile) -> float:
    """Seconds one file's whole download may take (see _TRANSFER_MIN_BYTES_PER_S)."""
    return _TRANSFER_START_SECONDS + spec.size / _TRANSFER_MIN_BYTES_PER_S


def _download(
    dest: Path,
    spec: DataFile,
    title: str,
    mirrors: Sequence[str],
    timeout: float,
    transfer_timeout: float | None,
) -> None:
    """Try each mirror in turn; raise BenchError naming the file if none delivers it."""
    failures: list[str] = []
    budget = _transfer_budget(spec) if transfer_timeout is None else transfer_timeout
    for base in mirrors:
        url = (base if base.endswith("/") else base + "/") + spec.name
        log.info("downloading %s file %s", title, url)
        reason = _download_one(url, dest, spec, title, timeout, budget)
        if reason is None:
            return
        log.warning("%s mirror failed for %s: %s", title, url, reason)
        failures.append(f"{url} ({reason})")
    tried = "; ".join(failures) if failures else "no mirrors given"
    raise BenchError(
        f"could not download {title} file {spec.name} (tried: {tried}); download it by hand "
        f"into {dest.parent} (sha256 {spec.sha256}), or {FIX_HINT}"
    )


@dataclass(frozen=True)
class _Fetch:
    """Where and how patiently missing files are downloaded."""

    mirrors: Sequence[str]
    timeout: float
    transfer_timeout: float | None


def ensure_files(
    dataset: Dataset,
    data_dir: Path,
    mirrors: Sequence[str] | None = None,
    *,
    download: bool = True,
    timeout: float = _READ_TIMEOUT,
    transfer_timeout: float | None = None,
    cache_dir: Path | None = None,
) -> dict[str, Path]:
    """Make sure the data set's files are in data_dir and verified, and their parsed-array
    cache sound; map file name to path.

    Present files are only checked, never overwritten; missing ones are downloaded from
    `mirrors` (default: the data set's; timeout: seconds per connect or read; transfer_timeout:
    per file, default _transfer_budget). The cache is checked here, before any training, so
    that a rebuild is reported where the user sees it rather than only in a cell's log.
    """
    fetch = _Fetch(dataset.mirrors if mirrors is None else mirrors, timeout, transfer_timeout)
    paths = _source_files(dataset, data_dir, fetch if download else None)
    _parse_all(dataset, paths, resolve_cache_dir(cache_dir))
    return paths


def _check_data_dir(dataset: Dataset, data_dir: Path, download: bool) -> None:
    """Raise BenchError unless data_dir is a folder, or the default one, which may be created.

    Only the default data dir is ever created: a --data-dir or MLP_BENCH_DATA_DIR that does not
    exist is far more often a typo than a wish for a new folder, and creating it would hide the
    typo behind an empty folder and a download (or, offline, a misleading "missing files").
    """
    title = dataset.title
    if data_dir.is_dir():
        return
    if data_dir.exists():
        raise BenchError(
            f"{title} data dir {data_dir} is a file, not a folder; point --data-dir or "
            f"{DATA_DIR_ENV} at the folder that holds the {title} files"
        )
    unreachable = _unreachable(data_dir)
    if unreachable:
        raise BenchError(
            f"{title} data dir {data_dir} {unreachable}; point --data-dir or {DATA_DIR_ENV} at "
            f"the folder that holds the {title} files, or make the link point at it"
        )
    if download and data_dir == DEFAULT_DATA_ROOT.expanduser():
        return
    create = f", or create it (mkdir -p {data_dir}) to download {title} into it" if download else ""
    raise BenchError(
        f"{title} data dir {data_dir} does not exist; check the path given by --data-dir or "
        f"{DATA_DIR_ENV}{create}"
    )


def _check_own_folder(dataset: Dataset, folder: Path) -> None:
    """Raise BenchError when something other than a folder stands at the data set's folder
    (<data dir>/<name>): a file, or a link that leads nowhere. Missing is fine: it is created."""
    if folder.is_dir() or not os.path.lexists(folder):
        return
    title = dataset.title
    why = _unreachable(folder) or "is a file, not a folder"
    raise BenchError(
        f"{title} folder {folder} {why}; make it the folder of the {title} files, or remove it"
        f" to download {title} into it"
    )


def _unreachable(path: Path) -> str:
    """Why a path that is not there cannot be reached through its symbolic links, or "" when
    it simply does not exist. Path.exists() says False for both, and "mkdir -p" is no fix for
    a link that loops or points nowhere: mkdir fails on it."""
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "leads into a loop of symbolic links"
        if os.path.islink(path):
            return f"is a symbolic link to {os.readlink(path)}, which does not exist"
        if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
            return f"cannot be reached ({exc.strerror})"
    return ""


def _source_files(dataset: Dataset, data_dir: Path, fetch: _Fetch | None) -> dict[str, Path]:
    """The data set's verified files in data_dir, downloading the missing ones if `fetch`."""
    title = dataset.title
    data_dir = data_dir.expanduser()
    _check_data_dir(dataset, data_dir, fetch is not None)
    folder = dataset_dir(data_dir, dataset)
    _check_own_folder(dataset, folder)
    paths = {spec.name: folder / spec.name for spec in dataset.files}
    missing: list[DataFile] = []
    for spec in dataset.files:
        path = paths[spec.name]
        # lexists: a dangling symlink is the user's file too, so report it, don't replace it.
        if os.path.lexists(path):
            _verify_present(path, spec, dataset)
        else:
            missing.append(spec)
    if not missing:
        return paths
    names = ", ".join(spec.name for spec in missing)
    if fetch is None:
        raise BenchError(
            f"{title} file(s) missing in {folder}: {names}; allow downloading, or put the "
            f"original files there, or point --data-dir or {DATA_DIR_ENV} at a data dir holding"
            f" them in {dataset.name}/"
        )
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BenchError(
            f"cannot create {title} folder {folder} ({one_line(exc)}); "
            f"point --data-dir or {DATA_DIR_ENV} at a writable folder"
        ) from exc
    try:
        for spec in missing:
            _download(
                paths[spec.name], spec, title, fetch.mirrors, fetch.timeout, fetch.transfer_timeout
            )
    except BenchError:
        if created and not any(folder.iterdir()):
            folder.rmdir()  # a failed download leaves no empty folder behind
        raise
    return paths


@dataclass(frozen=True, eq=False)
class Splits:
    """Train/validation/test arrays: x float32 (N, input size) in [0, 1], y int64 (N,)."""

    train_x: npt.NDArray[np.float32]
    train_y: npt.NDArray[np.int64]
    val_x: npt.NDArray[np.float32]
    val_y: npt.NDArray[np.int64]
    test_x: npt.NDArray[np.float32]
    test_y: npt.NDArray[np.int64]
    # The digest of the parsed arrays these came from (_data_sha256); "" for hand-made splits.
    sha256: str = ""

    @property
    def sizes(self) -> dict[str, int]:
        """Number of examples per split."""
        return {
            "train": len(self.train_y),
            "val": len(self.val_y),
            "test": len(self.test_y),
        }


def _cache_path(cache_dir: Path, dataset: Dataset, spec: DataFile) -> Path:
    """Cache file for spec, named after its data set (data sets share file names) and its
    sha256, so a changed source never hits. A repack parses to the same array, so it shares the
    published file's entry."""
    stem = spec.name.removesuffix(".gz")
    return cache_dir / f"{dataset.name}-{stem}.v{_CACHE_VERSION}.{spec.sha256}.npy"


def _digest_path(cached_at: Path) -> Path:
    """Where a cache entry's digest lies: beside it, named after it."""
    return cached_at.with_name(cached_at.name + ".sha256")


def _array_sha256(arr: npt.NDArray[np.uint8]) -> str:
    """sha256 of an array's dtype, shape and bytes: ~0.04 s for the 47 MB of training images
    on a CPU with SHA instructions (~0.15 s without), against ~0.35 s to parse their .gz."""
    digest = hashlib.sha256(f"{arr.dtype.str} {arr.shape}\n".encode())
    digest.update(np.ascontiguousarray(arr).data)
    return digest.hexdigest()


@dataclass(frozen=True, eq=False)
class _Parsed:
    """One file's uint8 array and its _array_sha256."""

    array: npt.NDArray[np.uint8]
    sha256: str


def _load_cached(path: Path, shape: tuple[int, ...]) -> _Parsed | str:
    """The cache entry, checked against the digest beside it; else why it cannot be used
    ("" when there is none). Its name alone proves nothing: anything can be written there."""
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        return ""
    except (OSError, ValueError, EOFError) as exc:
        return f"is unreadable ({one_line(exc)})"
    if not isinstance(arr, np.ndarray) or arr.dtype != np.uint8 or arr.shape != shape:
        return f"is not a uint8 array of shape {shape}"
    try:
        recorded = _digest_path(path).read_text().strip()
    except OSError:
        return "has no digest beside it"
    actual = _array_sha256(arr)
    if actual != recorded:
        return "does not match its digest"
    return _Parsed(arr, actual)


def _write_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write a file through a temporary one, so that no reader sees it half-written."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        # mkstemp's 0600 would hide a shared cache from other users.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _store_cached(path: Path, parsed: _Parsed) -> None:
    """Write the digest, then the array; any failure only means no cache, never an error.

    In that order, a reader between the two sees the new digest with the old array, which is
    the same array if it was sound, and is rebuilt if it was not.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(_digest_path(path), lambda fh: fh.write(f"{parsed.sha256}\n".encode()))
        _write_atomically(path, lambda fh: np.save(fh, parsed.array, allow_pickle=False))
    except OSError as exc:
        log.info("not caching %s: %s", path, exc)


def _parsed(path: Path, spec: DataFile, dataset: Dataset, cache_dir: Path) -> _Parsed:
    """The uint8 array of one verified file, from the cache when it passes its check."""
    cached_at = _cache_path(cache_dir, dataset, spec)
    cached = _load_cached(cached_at, spec.shape)
    if isinstance(cached, _Parsed):
        return cached
    if cached:
        log.warning(
            "%s parsed-array cache %s %s: rebuilding it from %s",
            dataset.title,
            cached_at,
            cached,
            path,
        )
    arr = dataset.parse(path, spec.data_bytes)
    # Unreachable for a file that passed its sha256 check; guards against a description whose
    # shape does not fit its files.
    if arr.shape != spec.shape:
        raise BenchError(
            f"{dataset.title} file {path} decodes to shape {arr.shape}, expected {spec.shape}; "
            f"{_REPLACE_FIX}"
        )
    parsed = _Parsed(arr, _array_sha256(arr))
    _store_cached(cached_at, parsed)
    return parsed


def _parse_all(dataset: Dataset, paths: dict[str, Path], cache_dir: Path) -> dict[str, _Parsed]:
    """Every file's parsed array, keyed by file name."""
    return {
        spec.name: _parsed(paths[spec.name], spec, dataset, cache_dir) for spec in dataset.files
    }


def _data_sha256(dataset: Dataset, parsed: dict[str, _Parsed]) -> str:
    """One digest for the parsed arrays of all the data set's files: what a cell records of
    the data it used."""
    lines = "".join(f"{spec.name} {parsed[spec.name].sha256}\n" for spec in dataset.files)
    return hashlib.sha256(lines.encode()).hexdigest()


def _to_x(images: npt.NDArray[np.uint8], input_size: int) -> npt.NDArray[np.float32]:
    """Flatten to (N, input_size) float32 in [0, 1] (a stage's data.scale "divide_by_255").

    Through a 256-entry table: the same float32 values as x.astype(float32) / 255, in one
    pass instead of two over 172 MB (it is part of every cell's start-up time).
    """
    table = np.arange(256, dtype=np.float32) / np.float32(255.0)
    return table[images.reshape(len(images), input_size)]


def load_dataset(
    dataset: Dataset,
    data_dir: Path | None = None,
    *,
    mirrors: Sequence[str] | None = None,
    cache_dir: Path | None = None,
    download: bool = True,
) -> Splits:
    """Ensure, verify and parse the data set's files into its split (MNIST: the tutorial's
    55,000/5,000/10,000); mirrors default to the data set's."""
    fetch = _Fetch(dataset.mirrors if mirrors is None else mirrors, _READ_TIMEOUT, None)
    data_dir = resolve_data_dir(data_dir)
    paths = _source_files(dataset, data_dir, fetch if download else None)
    parsed = _parse_all(dataset, paths, resolve_cache_dir(cache_dir))

    def cut(rows: Rows) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        images = parsed[rows.images].array[rows.start : rows.stop]
        labels = parsed[rows.labels].array[rows.start : rows.stop]
        return _to_x(images, dataset.input_size), labels.astype(np.int64)

    split = dataset.split
    (train_x, train_y), (val_x, val_y), (test_x, test_y) = (
        cut(rows) for rows in (split.train, split.validation, split.test)
    )
    return Splits(
        train_x=train_x,
        train_y=train_y,
        val_x=val_x,
        val_y=val_y,
        test_x=test_x,
        test_y=test_y,
        sha256=_data_sha256(dataset, parsed),
    )
