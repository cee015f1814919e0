"""What a data set is to the harness: its files, mirrors, split, shapes and parser.

A description only: no I/O here. bench.core.data downloads, verifies, parses and caches the files
of any description the same way, so a new data set is a module that builds one `Dataset`.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    # (path, max_bytes) -> the file's uint8 array; a file it cannot read, or that decodes to
    # more than max_bytes (DataFile.data_bytes), raises BenchError naming the path. It must stop
    # decompressing past max_bytes: a small gzip file can expand to gigabytes.
    Parser = Callable[[Path, int], npt.NDArray[np.uint8]]

# Where a user points the harness at data set files, and the fix that errors about them name
# (here, below both the generic loader and the file formats that repeat it).
DATA_DIR_ENV = "MLP_BENCH_DATA_DIR"
FIX_HINT = f"point --data-dir or {DATA_DIR_ENV} at a folder holding a good copy"

_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_HEX = re.compile(r"[0-9a-f]*")


@dataclass(frozen=True)
class Repack:
    """A redistributed copy of a published file whose compressed bytes differ, its contents not:
    e.g. a Linux distribution's package that strips gzip's stored file name and time."""

    sha256: str
    size: int
    source: str  # where it comes from, for the reader of the description


@dataclass(frozen=True)
class DataFile:
    """One published file: its name, size and checksums, and the shape it decodes to (which
    rejects a cache entry that does not fit)."""

    name: str
    sha256: str
    size: int
    shape: tuple[int, ...]
    md5: str = ""  # as published, for the tests; the harness checks the sha256
    # Other copies with the same contents, byte for byte once decompressed, taken as this file.
    repacks: tuple[Repack, ...] = ()

    def accepts(self, sha256: str) -> bool:
        """Whether a file of this sha256 is this file: the published copy or a known repack."""
        return sha256 == self.sha256 or any(r.sha256 == sha256 for r in self.repacks)

    def accepts_size(self, size: int) -> bool:
        """Whether a file of this size can be this file (free to check, unlike its sha256)."""
        return size == self.size or any(r.size == size for r in self.repacks)

    @property
    def rows(self) -> int:
        return self.shape[0]

    @property
    def data_bytes(self) -> int:
        """Bytes of uint8 data the file decodes to: what its parser may decompress at most."""
        return math.prod(self.shape)


@dataclass(frozen=True)
class Rows:
    """One split: rows [start, stop) of an images file and the same rows of its labels file."""

    images: str
    labels: str
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start

    def describe(self) -> str:
        """As MLflow's dataset inputs show it: "train-images-idx3-ubyte.gz[5000:60000]"."""
        return f"{self.images}[{self.start}:{self.stop}]"


@dataclass(frozen=True)
class Split:
    """Where the training, validation and test examples come from."""

    train: Rows
    validation: Rows
    test: Rows

    def parts(self) -> dict[str, Rows]:
        """The three splits by the context names MLflow records: train, validation, test."""
        return {"train": self.train, "validation": self.validation, "test": self.test}

    @property
    def sizes(self) -> dict[str, int]:
        """Examples per split, keyed as bench.core.data.Splits.sizes is."""
        return {"train": self.train.size, "val": self.validation.size, "test": self.test.size}


@dataclass(frozen=True)
class Dataset:
    """A data set as the harness knows it. Inconsistent descriptions raise ValueError when
    built, so a plug-in's mistake fails at import, not in a cell."""

    name: str  # what a stage file's data.dataset names, and the default folder's name
    title: str  # in messages: "MNIST file ... is corrupt"
    files: tuple[DataFile, ...]
    mirrors: tuple[str, ...]  # tried in order; every download is checked against its sha256
    split: Split
    validation: str  # how the split is named in a stage file's data.validation
    input_size: int
    classes: int
    parse: Parser = field(repr=False)
    file_format: str = "IDX"  # in "is a valid IDX file but not the MNIST file"
    # A data set whose files are easily taken for this one's, named when a file parses but
    # fails its checksum ("another data set, such as Fashion-MNIST?").
    confused_with: str = ""

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError(f"data set {self.name!r}: {'; '.join(problems)}")

    def problems(self) -> list[str]:
        """Everything that does not fit together in this description."""
        found = []
        if not _NAME.fullmatch(self.name):
            found.append("name: use 1 to 32 lower-case letters, digits, '_' or '-'")
        if self.input_size < 1 or self.classes < 2:
            found.append(f"input_size {self.input_size}, classes {self.classes}: need >= 1, >= 2")
        names = [f.name for f in self.files]
        if not names or len(set(names)) != len(names):
            found.append(f"files {names}: give at least one, each name once")
        found += [p for f in self.files for p in _file_problems(f)]
        if not found:  # the split checks look the files up
            found += self._split_problems()
        return found

    def _split_problems(self) -> list[str]:
        by_name = {f.name: f for f in self.files}
        found = []
        for part, rows in self.split.parts().items():
            images, labels = by_name.get(rows.images), by_name.get(rows.labels)
            if images is None or labels is None:
                found.append(f"{part}: {rows.images} or {rows.labels} is not one of the files")
                continue
            if len(images.shape) < 2 or math.prod(images.shape[1:]) != self.input_size:
                found.append(f"{part}: {images.name} {images.shape} is not N x {self.input_size}")
            if len(labels.shape) != 1:
                found.append(f"{part}: {labels.name} {labels.shape} is not one label per row")
            if not 0 <= rows.start < rows.stop <= min(images.rows, labels.rows):
                found.append(f"{part}: rows {rows.start}:{rows.stop} are not in {images.name}")
        used = {name for rows in self.split.parts().values() for name in (rows.images, rows.labels)}
        unused = sorted(set(by_name) - used)
        if unused:
            found.append(f"{', '.join(unused)}: in no split, yet downloaded and checked")
        # Validation or test rows that are also training rows would flatter the model.
        for (a, one), (b, other) in itertools.combinations(self.split.parts().items(), 2):
            if one.images == other.images and one.start < other.stop and other.start < one.stop:
                found.append(f"{a} and {b} share rows of {one.images}")
        return found


def _file_problems(f: DataFile) -> list[str]:
    found = []
    if len(f.sha256) != 64 or not _HEX.fullmatch(f.sha256):
        found.append(f"{f.name}: sha256 must be 64 lower-case hex digits")
    if f.md5 and (len(f.md5) != 32 or not _HEX.fullmatch(f.md5)):
        found.append(f"{f.name}: md5 must be empty or 32 lower-case hex digits")
    for repack in f.repacks:
        if len(repack.sha256) != 64 or not _HEX.fullmatch(repack.sha256) or repack.size < 1:
            found.append(f"{f.name}: repack from {repack.source} needs a sha256 and a size")
    if f.size < 1 or not f.shape or min(f.shape) < 1:
        found.append(f"{f.name}: size {f.size} and shape {f.shape} must be positive")
    return found
