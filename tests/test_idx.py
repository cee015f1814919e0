"""Tests for bench.core.datasets.idx: the IDX format, on small files and a cut real one."""

from __future__ import annotations

import gzip
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from bench.core.datasets.idx import IMAGE_MAGIC, LABEL_MAGIC, read_idx, write_idx
from bench.core.errors import BenchError
from tests.test_data import write_gzip_bomb


def _write_raw(path: Path, magic: int, dims: tuple[int, ...], payload: bytes) -> None:
    """An IDX file with any header and payload, valid or not."""
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    with gzip.open(path, "wb") as fh:
        fh.write(header + payload)


def _one_line_naming(exc: BenchError, *needles: str) -> str:
    msg = str(exc)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"
    return msg


def test_read_idx_small_valid_files(tmp_path: Path) -> None:
    images = np.arange(2 * 28 * 28, dtype=np.uint64).astype(np.uint8).reshape(2, 28, 28)
    _write_raw(tmp_path / "i.gz", IMAGE_MAGIC, (2, 28, 28), images.tobytes())
    np.testing.assert_array_equal(read_idx(tmp_path / "i.gz", images.size), images)
    _write_raw(tmp_path / "l.gz", LABEL_MAGIC, (3,), bytes([4, 0, 9]))
    assert read_idx(tmp_path / "l.gz", 3).tolist() == [4, 0, 9]


def test_write_idx_reads_back(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, (5, 14, 14), dtype=np.uint8)
    write_idx(tmp_path / "i.gz", images)
    np.testing.assert_array_equal(read_idx(tmp_path / "i.gz", images.size), images)
    write_idx(tmp_path / "l.gz", np.array([3, 1, 4], dtype=np.uint8))
    assert read_idx(tmp_path / "l.gz", 3).tolist() == [3, 1, 4]


@pytest.mark.parametrize(
    ("magic", "dims", "payload", "needle"),
    [
        (0x00000802, (3,), b"\x00\x01\x02", "magic 0x00000802"),
        (0x00000803, (1, 28, 28), b"\x00" * 10, "found 10"),
        (0x00000801, (3,), b"\x00" * 4, "found more"),
        (0x00000803, (1, 28), b"", "dimension"),
    ],
    ids=["bad-magic", "short-data", "trailing-data", "short-header"],
)
def test_read_idx_malformed(
    tmp_path: Path, magic: int, dims: tuple[int, ...], payload: bytes, needle: str
) -> None:
    path = tmp_path / "bad-idx.gz"
    _write_raw(path, magic, dims, payload)
    with pytest.raises(BenchError) as info:
        read_idx(path, 28 * 28, "MNIST file")
    msg = _one_line_naming(info.value, str(path), needle)
    assert msg.startswith(f"MNIST file {path} is not a valid IDX file: ")


def test_read_idx_not_gzip_or_cut(data_dir: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain.gz"
    plain.write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x01\x07")
    with pytest.raises(BenchError) as info:
        read_idx(plain, 1)
    _one_line_naming(info.value, str(plain))

    cut = tmp_path / "cut.gz"
    cut.write_bytes((data_dir / "t10k-labels-idx1-ubyte.gz").read_bytes()[:2000])
    with pytest.raises(BenchError) as info:
        read_idx(cut, 10000)
    _one_line_naming(info.value, str(cut))


@pytest.mark.parametrize(
    ("dims", "needle"),
    [
        ((100_000, 1_000, 1_000), "= 100000000000 data bytes, more than the 784 this file holds"),
        ((1, 28, 28), "found more"),
    ],
    ids=["header-claims-it", "trailing-data"],
)
def test_read_idx_decompresses_no_more_than_the_file_holds(
    tmp_path: Path, dims: tuple[int, ...], needle: str
) -> None:
    """A gzip bomb (64 MiB of zeros in 64 kB) whose header claims all of it was read whole:
    a 3 MB one took 3 GB. Refused before decompressing more than max_bytes + 1."""
    path = tmp_path / "bomb.gz"
    write_gzip_bomb(path, b"".join(d.to_bytes(4, "big") for d in (IMAGE_MAGIC, *dims)), 64)
    tracemalloc.start()
    try:
        with pytest.raises(BenchError) as info:
            read_idx(path, 28 * 28, "MNIST file")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    _one_line_naming(info.value, str(path), needle, "delete it")
    assert peak < 4 << 20
