from __future__ import annotations

import numpy as np

from bench.seeding import seeded_run
from bench.spec import load_stage, with_epochs


def test_same_seed_same_everything() -> None:
    spec = load_stage("dropout")
    a, b = seeded_run(spec, 7, 1000), seeded_run(spec, 7, 1000)
    for la, lb in zip(a.layers, b.layers, strict=True):
        np.testing.assert_array_equal(la.weight, lb.weight)
        np.testing.assert_array_equal(la.bias, lb.bias)
    np.testing.assert_array_equal(a.epoch_orders, b.epoch_orders)
    assert a.dropout_seed == b.dropout_seed


def test_different_seeds_differ() -> None:
    spec = load_stage("relu-xavier")
    a, b = seeded_run(spec, 0, 1000), seeded_run(spec, 1, 1000)
    assert not np.array_equal(a.layers[0].weight, b.layers[0].weight)
    assert not np.array_equal(a.epoch_orders, b.epoch_orders)


def test_shapes_dtypes_and_orders_are_permutations() -> None:
    spec = load_stage("relu-xavier")
    run = seeded_run(spec, 0, 1000)
    shapes = [(layer.weight.shape, layer.bias.shape) for layer in run.layers]
    assert shapes == [((784, 256), (256,)), ((256, 256), (256,)), ((256, 10), (10,))]
    assert all(layer.weight.dtype == np.float32 for layer in run.layers)
    assert run.epoch_orders.shape == (30, 1000)
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
    np.testing.assert_array_equal(short.epoch_orders, full.epoch_orders[:2])
