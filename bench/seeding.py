"""One integer seed -> everything random that must be identical across backends (numpy only).

The seed is split once, per purpose, so that changing e.g. the number of epochs leaves the
initial weights unchanged, and adding dropout leaves the epoch orders unchanged.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from bench.spec import InitSpec, StageSpec

# Order matters: it fixes which child seed serves which purpose. Append, never reorder.
_PURPOSES = ("init", "order", "dropout")


@dataclass(frozen=True)
class Layer:
    """One dense layer's parameters: weight of shape (fan_in, fan_out), bias of (fan_out,)."""

    weight: np.ndarray
    bias: np.ndarray


@dataclass(frozen=True)
class SeededRun:
    """What a backend receives so that every framework runs the same experiment."""

    seed: int
    layers: tuple[Layer, ...]
    epoch_orders: np.ndarray  # (epochs, n_train) int64: the sample order of each epoch
    dropout_seed: int  # seeds the framework's own dropout RNG (outside parity mode)


def _streams(seed: int) -> dict[str, np.random.Generator]:
    children = np.random.SeedSequence(seed).spawn(len(_PURPOSES))
    return {
        name: np.random.default_rng(child) for name, child in zip(_PURPOSES, children, strict=True)
    }


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


def epoch_orders(spec: StageSpec, n_train: int, rng: np.random.Generator) -> np.ndarray:
    epochs = spec.training.epochs
    if not spec.training.reshuffle_every_epoch:
        return np.tile(rng.permutation(n_train), (epochs, 1))
    return np.stack([rng.permutation(n_train) for _ in range(epochs)])


def seeded_run(spec: StageSpec, seed: int, n_train: int) -> SeededRun:
    """Derive weights, orders and the dropout seed of one cell from its integer seed."""
    streams = _streams(seed)
    return SeededRun(
        seed=seed,
        layers=initial_layers(spec, streams["init"]),
        epoch_orders=epoch_orders(spec, n_train, streams["order"]),
        dropout_seed=int(streams["dropout"].integers(0, 2**31 - 1)),
    )


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
