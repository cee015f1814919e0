"""One integer seed -> everything random that must be identical across backends (numpy only).

The seed is split once, per purpose, so that changing e.g. the number of epochs leaves the
initial weights unchanged, and adding dropout leaves the epoch orders unchanged.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from bench.core.spec import InitSpec, StageSpec

# Order matters: it fixes which child seed serves which purpose. Append, never reorder.
_PURPOSES = ("init", "order", "dropout")


@dataclass(frozen=True)
class Layer:
    """One dense layer's parameters: weight of shape (fan_in, fan_out), bias of (fan_out,)."""

    weight: np.ndarray
    bias: np.ndarray


class EpochOrders:
    """The sample order of each epoch ((n_train,) int64), drawn when asked for: drawn up front,
    10,000 epochs of 55,000 samples would take 4.4 GB before the first step. The orders are
    drawn in sequence from one stream, as they always were, so the same seed gives the same
    orders; asking for an earlier epoch again redraws the stream from its start."""

    def __init__(
        self, stream: np.random.SeedSequence, epochs: int, n_train: int, reshuffle: bool
    ) -> None:
        self._stream = stream
        self._epochs = epochs
        self._n_train = n_train
        self._reshuffle = reshuffle
        self._rng = np.random.default_rng(stream)
        self._drawn = 0  # orders drawn from self._rng so far
        self._last = np.empty(0, dtype=np.int64)

    def __len__(self) -> int:
        return self._epochs

    def __getitem__(self, index: int | slice) -> np.ndarray:
        """One epoch's order, or a slice of epochs' as an (epochs, n_train) array."""
        if isinstance(index, slice):
            rows = [self[i] for i in range(*index.indices(self._epochs))]
            return np.stack(rows) if rows else np.empty((0, self._n_train), dtype=np.int64)
        epoch = index + self._epochs if index < 0 else index
        if not 0 <= epoch < self._epochs:
            raise IndexError(f"epoch {index} of {self._epochs}")
        # Without reshuffling every epoch repeats the first order.
        wanted = epoch + 1 if self._reshuffle else 1
        if wanted < self._drawn:
            self._rng, self._drawn = np.random.default_rng(self._stream), 0
        while self._drawn < wanted:
            self._last = self._rng.permutation(self._n_train)
            self._drawn += 1
        return self._last

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[epoch] for epoch in range(self._epochs))


@dataclass(frozen=True)
class SeededRun:
    """What a backend receives so that every framework runs the same experiment."""

    seed: int
    layers: tuple[Layer, ...]
    epoch_orders: EpochOrders
    dropout_seed: int  # seeds the framework's own dropout RNG (outside parity mode)


def _children(seed: int) -> dict[str, np.random.SeedSequence]:
    children = np.random.SeedSequence(seed).spawn(len(_PURPOSES))
    return dict(zip(_PURPOSES, children, strict=True))


def _draw(rng: np.random.Generator, init: InitSpec, shape: tuple[int, ...]) -> np.ndarray:
    if init.kind == "normal":
        assert init.std is not None  # guaranteed by spec validation
        values = rng.normal(0.0, init.std, size=shape)
    elif init.kind == "glorot_uniform":
        # Glorot & Bengio (2010); TF's glorot_uniform uses fan_in + fan_out of the weight matrix.
        fan_in, fan_out = shape
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        values = rng.uniform(-limit, limit, size=shape)
    else:
        values = np.zeros(shape)
    return values.astype(np.float32)


def initial_layers(spec: StageSpec, rng: np.random.Generator) -> tuple[Layer, ...]:
    sizes = spec.model.layer_sizes
    layers = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        weight = _draw(rng, spec.init.weights, (fan_in, fan_out))
        bias = _draw(rng, spec.init.biases, (fan_out,))
        layers.append(Layer(weight, bias))
    return tuple(layers)


def seeded_run(spec: StageSpec, seed: int, n_train: int) -> SeededRun:
    """Derive weights, orders and the dropout seed of one cell from its integer seed."""
    children = _children(seed)
    training = spec.training
    return SeededRun(
        seed=seed,
        layers=initial_layers(spec, np.random.default_rng(children["init"])),
        epoch_orders=EpochOrders(
            children["order"], training.epochs, n_train, training.reshuffle_every_epoch
        ),
        dropout_seed=int(np.random.default_rng(children["dropout"]).integers(0, 2**31 - 1)),
    )


def describe_seeds(seeds: Iterable[int]) -> str:
    """Seeds as runs of consecutive numbers ("0-1999", "0-4,7"): listed one by one, 2,000
    seeds overflow MLflow's 6,000-character param value."""
    spans: list[tuple[int, int]] = []
    for seed in seeds:
        if spans and seed == spans[-1][1] + 1:
            spans[-1] = (spans[-1][0], seed)
        else:
            spans.append((seed, seed))
    return ",".join(str(first) if first == last else f"{first}-{last}" for first, last in spans)


def dropout_masks(spec: StageSpec, run: SeededRun, epoch: int, steps: int) -> list[np.ndarray]:
    """Parity mode's dropout: which units each step keeps, per hidden layer, drawn by numpy.

    Shape (steps, batch, units), bool. One stream per epoch, so any epoch can be redrawn alone.
    """
    rate = spec.model.dropout_rate
    rng = np.random.default_rng(np.random.SeedSequence([run.dropout_seed, epoch]))
    batch = spec.training.batch_size
    return [
        rng.random((steps, batch, units), dtype=np.float32) >= rate
        for units in spec.model.layer_sizes[1:-1]
    ]
