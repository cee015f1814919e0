from __future__ import annotations

import math

import pytest
from scipy import stats as scipy_stats

from bench.recording.stats import combined_noise, outcome_counts, summarize


def test_summary_matches_scipy() -> None:
    values = [0.9794, 0.9784, 0.9790, 0.9794, 0.9804]
    s = summarize(values)
    assert s is not None and s.n == 5
    low, high = scipy_stats.t.interval(0.95, 4, loc=s.mean, scale=scipy_stats.sem(values))
    assert (s.ci95_low, s.ci95_high) == pytest.approx((low, high))
    assert s.std == pytest.approx(scipy_stats.tstd(values))
    assert (s.min, s.max) == (0.9784, 0.9804)


def test_summary_of_one_and_of_none() -> None:
    one = summarize([0.5])
    assert one is not None and one.std == 0.0 and one.ci95_low == one.ci95_high == 0.5
    assert summarize([]) is None
    assert summarize([math.nan, math.inf]) is None


def test_outcomes_and_noise() -> None:
    assert outcome_counts(["diverged", "diverged", "did-not-learn"]) == {
        "converged": 0,
        "did-not-learn": 1,
        "diverged": 2,
        "failed": 0,
    }
    a, b = summarize([1.0, 2.0, 3.0]), summarize([2.0, 2.0, 5.0])
    assert a is not None and b is not None
    assert combined_noise(a, b) == pytest.approx(math.sqrt(1.0 / 3 + 3.0 / 3))
