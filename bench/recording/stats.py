"""Statistics over seeds: mean, spread and a 95% confidence interval per group of cells."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

from bench.core.types import CellRun


@dataclass(frozen=True)
class Summary:
    """One metric over n seeds. std is the sample standard deviation (n - 1)."""

    n: int
    mean: float
    std: float
    min: float
    max: float
    ci95_low: float
    ci95_high: float

    def metrics(self, name: str) -> dict[str, float]:
        return {
            f"{name}_mean": self.mean,
            f"{name}_std": self.std,
            f"{name}_min": self.min,
            f"{name}_max": self.max,
            f"{name}_ci95_low": self.ci95_low,
            f"{name}_ci95_high": self.ci95_high,
            f"{name}_n": float(self.n),
        }


def t_quantile_975(dof: int) -> float:
    """Student's t 97.5% quantile: the half-width factor of a two-sided 95% interval."""
    from scipy.stats import t  # scipy only here: the rest of the harness does without it

    return float(t.ppf(0.975, dof))


def summarize(values: list[float]) -> Summary | None:
    """Summary of the finite values, or None when there are none."""
    data = np.array([v for v in values if math.isfinite(v)], dtype=np.float64)
    if data.size == 0:
        return None
    mean = float(data.mean())
    std = float(data.std(ddof=1)) if data.size > 1 else 0.0
    half = t_quantile_975(data.size - 1) * std / math.sqrt(data.size) if data.size > 1 else 0.0
    return Summary(
        n=int(data.size),
        mean=mean,
        std=std,
        min=float(data.min()),
        max=float(data.max()),
        ci95_low=mean - half,
        ci95_high=mean + half,
    )


def outcome_counts(outcomes: list[str]) -> dict[str, int]:
    counts = Counter(outcomes)
    return {name: counts[name] for name in ("converged", "did-not-learn", "diverged", "failed")}


def combined_noise(a: Summary, b: Summary) -> float:
    """Standard error of the difference of two means (Welch)."""
    return math.sqrt(a.std**2 / a.n + b.std**2 / b.n)


@dataclass(frozen=True)
class Member:
    """What a group's statistics need of one cell: from a run just made, or read back from
    the store (a resumed invocation's cells that finished before)."""

    outcome: str  # "failed": no result
    test_accuracy: float | None = None
    train_samples_per_s: float | None = None

    @classmethod
    def of(cls, run: CellRun) -> Member:
        if run.result is None:
            return cls("failed")
        r = run.result
        return cls(r.outcome, r.test_accuracy, r.train_samples_per_s)


def group_metrics(members: list[Member]) -> dict[str, float]:
    """Statistics over a group's seeds: accuracy and speed summaries, outcome counts."""
    metrics: dict[str, float] = {}
    for name in ("test_accuracy", "train_samples_per_s"):
        values = [getattr(m, name) for m in members if getattr(m, name) is not None]
        summary = summarize(values)
        if summary is not None:
            metrics.update(summary.metrics(name))
    outcomes = [m.outcome for m in members]
    metrics.update({f"outcome_{k}": float(v) for k, v in outcome_counts(outcomes).items()})
    return metrics
