"""MNIST: the four original IDX files, their published checksums, and the tutorial's split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

from bench.core.datasets.dataset import DataFile, Dataset, Rows, Split
from bench.core.datasets.idx import read_idx

TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
TRAIN_LABELS = "train-labels-idx1-ubyte.gz"
TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
TEST_LABELS = "t10k-labels-idx1-ubyte.gz"


# The tutorial's split: the first 5,000 training images are held out for validation.
SPLIT = Split(
    train=Rows(TRAIN_IMAGES, TRAIN_LABELS, 5000, 60000),
    validation=Rows(TRAIN_IMAGES, TRAIN_LABELS, 0, 5000),
    test=Rows(TEST_IMAGES, TEST_LABELS, 0, 10000),
)


def _parse(path: Path, max_bytes: int) -> npt.NDArray[np.uint8]:
    return read_idx(path, max_bytes, "MNIST file")


MNIST = Dataset(
    name="mnist",
    title="MNIST",
    files=(
        DataFile(
            TRAIN_IMAGES,
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            9912422,
            (60000, 28, 28),
            md5="f68b3c2dcbeaaa9fbdd348bbdeb94873",
        ),
        DataFile(
            TRAIN_LABELS,
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            28881,
            (60000,),
            md5="d53e105ee54ea40749a09fcbcd1e9432",
        ),
        DataFile(
            TEST_IMAGES,
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            1648877,
            (10000, 28, 28),
            md5="9fb629c4189551a2d022fa330f9573f3",
        ),
        DataFile(
            TEST_LABELS,
            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
            4542,
            (10000,),
            md5="ec29112dd5afa0611ce80d1b7f02629c",
        ),
    ),
    mirrors=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    split=SPLIT,
    validation="first_5000_train",
    input_size=28 * 28,
    classes=10,
    parse=_parse,
    # Same file names, shapes and format: the likeliest wrong file in an MNIST folder.
    confused_with="Fashion-MNIST",
)
