"""Data set registry: name -> description. A new data set is one module beside mnist.py that
builds a `Dataset`, and one line in DATASETS; a stage file names it in `data.dataset`."""

from __future__ import annotations

from bench.core.datasets.dataset import Dataset
from bench.core.datasets.fashion_mnist import FASHION_MNIST
from bench.core.datasets.mnist import MNIST
from bench.core.errors import BenchError

DATASETS: dict[str, Dataset] = {
    "mnist": MNIST,
    "fashion-mnist": FASHION_MNIST,
}


def get_dataset(name: str) -> Dataset:
    """The registered data set of that name, or a one-line BenchError naming the choices."""
    if name not in DATASETS:
        raise BenchError(f"unknown data set {name!r}; choose from {', '.join(DATASETS)}")
    return DATASETS[name]
