"""The IDX format of MNIST and its look-alikes (Fashion-MNIST, KMNIST): a gzip-compressed
big-endian header, then uint8 data."""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np
import numpy.typing as npt

from bench.core.datasets.dataset import FIX_HINT
from bench.core.errors import BenchError, one_line

IMAGE_MAGIC = 0x00000803
LABEL_MAGIC = 0x00000801
_CHUNK = 1 << 20


def read_idx(path: Path, max_bytes: int, what: str = "IDX file") -> npt.NDArray[np.uint8]:
    """Parse a gzip-compressed uint8 IDX file (images (N, rows, columns) or labels (N,)) of at
    most max_bytes data bytes; `what` names the file in errors ("MNIST file").

    At most max_bytes + 1 bytes are ever decompressed: a few kilobytes of gzip can expand to
    gigabytes, and a header can claim any size, so neither the file's size nor its header
    bounds the memory a bad file takes.
    """
    bad = f"{what} {path} is not a valid IDX file"
    fix = f"delete it to re-download it, or {FIX_HINT}"
    try:
        with gzip.open(path, "rb") as fh:
            header = fh.read(4)
            if len(header) != 4:
                raise BenchError(f"{bad}: shorter than its 4-byte header; {fix}")
            magic = int.from_bytes(header, "big")
            ndim = {IMAGE_MAGIC: 3, LABEL_MAGIC: 1}.get(magic)
            if ndim is None:
                raise BenchError(
                    f"{bad}: magic 0x{magic:08x}, expected 0x{IMAGE_MAGIC:08x} (images) "
                    f"or 0x{LABEL_MAGIC:08x} (labels); {fix}"
                )
            raw_dims = fh.read(4 * ndim)
            if len(raw_dims) != 4 * ndim:
                raise BenchError(f"{bad}: header ends before its {ndim} dimension(s); {fix}")
            dims = tuple(int.from_bytes(raw_dims[i : i + 4], "big") for i in range(0, 4 * ndim, 4))
            expected = math.prod(dims)
            if expected > max_bytes:
                raise BenchError(
                    f"{bad}: header says {'x'.join(map(str, dims))} = {expected} data bytes, "
                    f"more than the {max_bytes} this file holds; {fix}"
                )
            # Read in chunks up to one byte past the expected end: trailing data is caught,
            # and a header claiming absurd sizes never makes us allocate them up front.
            data = bytearray()
            while len(data) <= expected and (
                chunk := fh.read(min(_CHUNK, expected + 1 - len(data)))
            ):
                data += chunk
    except (OSError, EOFError, zlib.error) as exc:
        # Not gzip -> BadGzipFile (an OSError); cut or damaged stream -> EOFError/zlib.error.
        raise BenchError(f"cannot read {what} {path} ({one_line(exc)}); {fix}") from exc
    if len(data) != expected:
        found = "more" if len(data) > expected else str(len(data))
        raise BenchError(
            f"{bad}: header says {'x'.join(map(str, dims))} = {expected} data bytes, "
            f"found {found}; {fix}"
        )
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


def write_idx(path: Path, array: npt.NDArray[np.uint8]) -> None:
    """Write images (N, rows, columns) or labels (N,) as a gzip-compressed IDX file: how a
    data set in this format is made from arrays (the tests build small ones)."""
    magic = {3: IMAGE_MAGIC, 1: LABEL_MAGIC}[array.ndim]
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())
