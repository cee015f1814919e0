from __future__ import annotations

import dataclasses
import tracemalloc

import numpy as np
import pytest

from bench.core.seeding import describe_seeds, seeded_run
from bench.core.spec import load_stage, with_epochs


def test_same_seed_same_everything() -> None:
    spec = load_stage("dropout")
    a, b = seeded_run(spec, 7, 1000), seeded_run(spec, 7, 1000)
    for la, lb in zip(a.layers, b.layers, strict=True):
        np.testing.assert_array_equal(la.weight, lb.weight)
        np.testing.assert_array_equal(la.bias, lb.bias)
    np.testing.assert_array_equal(a.epoch_orders[:], b.epoch_orders[:])
    assert a.dropout_seed == b.dropout_seed


def test_different_seeds_differ() -> None:
    spec = load_stage("relu-xavier")
    a, b = seeded_run(spec, 0, 1000), seeded_run(spec, 1, 1000)
    assert not np.array_equal(a.layers[0].weight, b.layers[0].weight)
    assert not np.array_equal(a.epoch_orders[:], b.epoch_orders[:])


def test_shapes_dtypes_and_orders_are_permutations() -> None:
    spec = load_stage("relu-xavier")
    run = seeded_run(spec, 0, 1000)
    shapes = [(layer.weight.shape, layer.bias.shape) for layer in run.layers]
    assert shapes == [((784, 256), (256,)), ((256, 256), (256,)), ((256, 10), (10,))]
    assert all(layer.weight.dtype == np.float32 for layer in run.layers)
    assert len(run.epoch_orders) == 30 and run.epoch_orders[:].shape == (30, 1000)
    for order in run.epoch_orders:
        np.testing.assert_array_equal(np.sort(order), np.arange(1000))
    assert not np.array_equal(run.epoch_orders[0], run.epoch_orders[1])  # reshuffled


def test_glorot_bounds_and_normal_std() -> None:
    xavier = seeded_run(load_stage("relu-xavier"), 0, 10).layers[0]
    limit = np.sqrt(6.0 / (784 + 256))
    assert np.abs(xavier.weight).max() <= limit
    assert np.abs(xavier.weight).max() > 0.99 * limit
    normal = seeded_run(load_stage("relu-normal"), 0, 10).layers[0]
    assert abs(normal.weight.std() - 1.0) < 0.01
    assert abs(xavier.bias.std() - 1.0) < 0.15  # biases are N(0, 1) in every stage


def test_epoch_count_does_not_change_weights_or_early_orders() -> None:
    spec = load_stage("relu-xavier")
    short, full = seeded_run(with_epochs(spec, 2), 3, 500), seeded_run(spec, 3, 500)
    np.testing.assert_array_equal(short.layers[2].weight, full.layers[2].weight)
    np.testing.assert_array_equal(short.epoch_orders[:], full.epoch_orders[:2])


def test_orders_are_drawn_when_asked_for_not_up_front() -> None:
    """10,000 epochs of orders up front were 4.4 GB on the full training set:
    here 10,000 x 1,000 would be 80 MB; drawn lazily, a cell holds one order at a time."""
    spec = with_epochs(load_stage("relu-xavier"), 10_000)
    tracemalloc.start()
    try:
        run = seeded_run(spec, 0, 1000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20e6  # the initial weights, drawn in float64, are ~2 MB
    assert len(run.epoch_orders) == 10_000


def test_lazy_orders_are_the_stream_drawn_in_sequence() -> None:
    """The same orders as drawing every epoch up front from the seed's "order" stream, in any
    order of asking, so records made before stay reproducible."""
    spec = with_epochs(load_stage("dropout"), 6)
    order_stream = np.random.SeedSequence(5).spawn(3)[1]
    rng = np.random.default_rng(order_stream)
    up_front = np.stack([rng.permutation(700) for _ in range(6)])
    orders = seeded_run(spec, 5, 700).epoch_orders
    for epoch in (3, 0, 5, 5, 1, -1):
        np.testing.assert_array_equal(orders[epoch], up_front[epoch])
    np.testing.assert_array_equal(np.stack(list(orders)), up_front)
    with pytest.raises(IndexError):
        orders[6]
    fixed = dataclasses.replace(spec, training=dataclasses.replace(spec.training, epochs=3))
    fixed = dataclasses.replace(
        fixed, training=dataclasses.replace(fixed.training, reshuffle_every_epoch=False)
    )
    same = seeded_run(fixed, 5, 700).epoch_orders
    assert all(np.array_equal(same[e], up_front[0]) for e in range(3))


def test_seeds_are_recorded_as_ranges() -> None:
    """--seeds 2000 listed one by one overflowed MLflow's 6,000-character param."""
    assert describe_seeds(range(2000)) == "0-1999"
    assert describe_seeds([0, 1, 2, 7, 9, 10, 4]) == "0-2,7,9-10,4"
