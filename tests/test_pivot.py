"""The results at a glance (bench.recording.pivot): stage rows, backend (and device) columns."""

from __future__ import annotations

from bench.recording.pivot import Entry, pivot


def _entry(
    backend: str,
    device: str,
    outcome: str,
    accuracy: float | None,
    speed: float | None,
    stage: str = "adam",
    step: int | None = None,
) -> Entry:
    return Entry(stage, backend, device, outcome, accuracy, speed, step)


def test_seeds_give_mean_and_std_and_say_how_many() -> None:
    table = pivot(
        [
            _entry("torch", "cpu", "converged", 0.97, 1000.0),
            _entry("torch", "cpu", "converged", 0.98, 3000.0),
            _entry("jax", "cpu", "converged", 0.96, None),
        ]
    )
    assert table.header == ["stage", "torch", "jax"]  # one device: named by backend only
    assert table.rows == [["adam", "97.50 ± 0.71% (n=2), 2,000/s", "96.00% (n=1), -/s"]]


def test_diverged_and_failed_cells_are_words_not_numbers() -> None:
    table = pivot(
        [
            _entry("torch", "cpu", "diverged", 0.098, None, step=28),
            _entry("jax", "cpu", "converged", 0.97, 500.0),
            _entry("jax", "cpu", "failed", None, None),
            _entry("jax", "cpu", "diverged", 0.098, None, step=3),
            _entry("tensorflow", "cpu", "failed", None, None),
            _entry("tensorflow", "cpu", "failed", None, None),
        ]
    )
    assert table.rows == [
        [
            "adam",
            "diverged at step 28",
            "97.00% (n=1), 500/s; 1 failed, 1 diverged",
            "2 failed",
        ]
    ]


def test_several_devices_are_columns_of_their_own_and_a_missing_one_a_dash() -> None:
    table = pivot(
        [
            _entry("torch", "cpu", "converged", 0.97, 10.0),
            _entry("torch", "gpu", "converged", 0.97, 99.0),
            _entry("torch", "cpu", "did-not-learn", 0.11, 10.0, stage="sigmoid"),
        ]
    )
    assert table.header == ["stage", "torch cpu", "torch gpu"]
    assert table.rows[1] == ["sigmoid", "11.00% (n=1), 10/s; did-not-learn", "-"]
