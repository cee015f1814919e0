"""Fashion-MNIST (Zalando Research): MNIST's file names, shapes and format, of clothes instead of
digits; its published checksums, and MNIST's split (the first 5,000 training images held out)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

from bench.core.datasets.dataset import DataFile, Dataset, Repack
from bench.core.datasets.idx import read_idx
from bench.core.datasets.mnist import (
    SPLIT,
    TEST_IMAGES,
    TEST_LABELS,
    TRAIN_IMAGES,
    TRAIN_LABELS,
)

# Debian's dataset-fashion-mnist package (/usr/share/datasets/fashion-mnist/) ships the same
# data with gzip's stored file name and time stripped, so its .gz files have other checksums.
_DEBIAN = "Debian's dataset-fashion-mnist"


def _parse(path: Path, max_bytes: int) -> npt.NDArray[np.uint8]:
    return read_idx(path, max_bytes, "Fashion-MNIST file")


FASHION_MNIST = Dataset(
    name="fashion-mnist",
    title="Fashion-MNIST",
    files=(
        DataFile(
            TRAIN_IMAGES,
            "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            26421880,
            (60000, 28, 28),
            md5="8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            repacks=(
                Repack(
                    "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
                    26421856,
                    _DEBIAN,
                ),
            ),
        ),
        DataFile(
            TRAIN_LABELS,
            "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            29515,
            (60000,),
            md5="25c81989df183df01b3e8a0aad5dffbe",
            repacks=(
                Repack(
                    "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
                    29491,
                    _DEBIAN,
                ),
            ),
        ),
        DataFile(
            TEST_IMAGES,
            "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            4422102,
            (10000, 28, 28),
            md5="bef4ecab320f06d8554ea6380940ec79",
            repacks=(
                Repack(
                    "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
                    4422079,
                    _DEBIAN,
                ),
            ),
        ),
        DataFile(
            TEST_LABELS,
            "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
            5148,
            (10000,),
            md5="bb300cfdad3c16e7a12a480ee83cd310",
            repacks=(
                Repack(
                    "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
                    5125,
                    _DEBIAN,
                ),
            ),
        ),
    ),
    mirrors=(
        # Zalando's own: the download links of the data set's README, then its repository.
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        # Keras' copy (keras.datasets.fashion_mnist).
        "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
    ),
    # MNIST's split, so that a stage's figures on the two data sets compare.
    split=SPLIT,
    validation="first_5000_train",
    input_size=28 * 28,
    classes=10,
    parse=_parse,
    confused_with="MNIST",
)
