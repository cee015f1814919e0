"""The accuracy verdict's statistics with exact numbers: bit-identity across software, TOST
within the equivalence margin, better and worse, and the seeds that would decide the rest."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy.stats import t, ttest_ind

from bench.recording import verdict as compare
from bench.recording import verdict_text
from bench.recording.verdict import Fingerprint, JudgedCell, Settings, accuracy_difference
from tests.test_compare import _cell, _side

# Five seeds of relu-xavier on MNIST: 97.91% +- 0.05 points, as its stage file's calibration.
BASE = [0.9786, 0.9790, 0.9791, 0.9793, 0.9798]


def _seeds(
    accuracies: list[float], version: str = "2.20.0", losses: list[float] | None = None
) -> list[JudgedCell]:
    """One tensorflow cell a seed, on tensorflow `version`; its step losses are the seed's
    own unless given (the same for both sides: bit-identical)."""
    return [
        replace(
            _cell(seed, accuracy=a, losses=losses or [2.3, 1.0, 0.5 + seed]),
            key=("relu-xavier", "tensorflow", "cpu", seed),
            fingerprint=Fingerprint({"cpu_model": "AMD EPYC"}, {"framework_version": version}),
        )
        for seed, a in enumerate(accuracies)
    ]


UPGRADED = [2.3, 0.9, 0.4]  # another framework's step losses: not the same bits


def _upgrade(cand: list[float], settings: Settings | None = None) -> compare.Comparison:
    """BASE on tensorflow 2.20.0 against `cand` on 2.21.0, whose step losses differ."""
    return compare.compare(
        _side("a", *_seeds(BASE)),
        _side("b", *_seeds(cand, "2.21.0", UPGRADED)),
        settings or Settings(expected_software=frozenset({"framework_version"})),
    )


def test_tost_is_two_one_sided_welch_tests_against_the_margin() -> None:
    """Checked against scipy's Welch test on the candidate shifted by the margin, and the
    CI against its definition: within the margin exactly where TOST is significant."""
    cand = [0.9788, 0.9789, 0.9795, 0.9790, 0.9784]
    found = accuracy_difference(BASE, cand, margin=0.3, alpha=0.01)
    assert found is not None
    b, c = 100 * np.array(BASE), 100 * np.array(cand)
    lower = ttest_ind(c + 0.3, b, equal_var=False, alternative="greater").pvalue
    upper = ttest_ind(c - 0.3, b, equal_var=False, alternative="less").pvalue
    assert found.p_equivalent == pytest.approx(max(lower, upper), rel=1e-9)
    assert found.difference == pytest.approx(c.mean() - b.mean())
    result = ttest_ind(c, b, equal_var=False)
    half = float(t.ppf(0.99, result.df)) * (c.mean() - b.mean()) / result.statistic
    assert (found.ci_low, found.ci_high) == pytest.approx(
        (found.difference - half, found.difference + half)
    )
    assert -0.3 < found.ci_low < found.ci_high < 0.3 and found.verdict == "equivalent"
    assert found.p_worse == pytest.approx(
        ttest_ind(c, b, equal_var=False, alternative="less").pvalue, rel=1e-9
    )
    assert accuracy_difference(BASE, cand[:1], margin=0.3, alpha=0.01) is None


def test_welch_one_sided_p() -> None:
    found = accuracy_difference([0.97, 0.98, 0.975], [0.96, 0.965, 0.962], 0.3, 0.01)
    assert found is not None
    assert found.p_worse == pytest.approx(0.015204363977072154, rel=1e-9)
    same = accuracy_difference([0.9, 0.9], [0.9, 0.9], 0.3, 0.01)  # no spread: exact
    assert same is not None and (same.p_equivalent, same.verdict) == (0.0, "equivalent")
    lower = accuracy_difference([0.9, 0.9], [0.8, 0.8], 0.3, 0.01)
    assert lower is not None and (lower.p_worse, lower.verdict) == (0.0, "worse")


def test_bit_identical_losses_across_a_framework_upgrade() -> None:
    """The same bits on tensorflow 2.20.0 and 2.21.0: bit-identical, saying across what
    (before, another framework version skipped the bitwise check)."""
    result = compare.compare(
        _side("a", *_seeds(BASE)), _side("b", *_seeds(BASE, "2.21.0")), Settings()
    )
    [accuracy] = result.accuracy
    assert (accuracy.method, accuracy.verdict) == ("bit-identical", "ok")
    assert accuracy.detail == (
        "step losses bit-identical (5 seed(s)) across tensorflow 2.20.0 -> 2.21.0"
    )
    assert result.exit_code == compare.EXIT_OK


def test_other_bits_on_other_software_are_judged_by_the_seeds() -> None:
    """0.1 points lower on every seed: significant (p < 0.01) but within the 0.3-point
    margin, so equivalent, not a regression (before: Welch's regression)."""
    result = _upgrade([a - 0.001 for a in BASE])
    [accuracy] = result.accuracy
    assert accuracy.difference is not None and accuracy.difference.p_worse < 0.01
    assert (accuracy.method, accuracy.verdict) == ("equivalent", "ok")
    assert accuracy.detail.startswith(
        "equivalent within ±0.3 pp: difference -0.10 pp, 98% CI -0.18 to -0.02, margin ±0.3 pp,"
        " 5 vs 5 seeds (relu-xavier/tensorflow/cpu/seed0: step losses differ from step 2"
        " across tensorflow 2.20.0 -> 2.21.0)"
    )
    assert result.exit_code == compare.EXIT_OK
    # Within the same software, other bits stay a regression of determinism.
    same = compare.compare(
        _side("a", *_seeds(BASE)), _side("b", *_seeds(BASE, losses=UPGRADED)), Settings()
    )
    assert same.accuracy[0].detail.endswith("step losses differ from step 2")
    assert same.exit_code == compare.EXIT_REGRESSION


def test_worse_is_a_regression_and_better_is_said() -> None:
    worse = _upgrade([a - 0.004 for a in BASE])
    assert (worse.accuracy[0].method, worse.exit_code) == ("worse", compare.EXIT_REGRESSION)
    assert worse.regressions[0].startswith(
        "accuracy relu-xavier/tensorflow/cpu: worse: Welch one-sided p = "
    )
    better = _upgrade([a + 0.004 for a in BASE])
    assert (better.accuracy[0].method, better.exit_code) == ("better", compare.EXIT_OK)
    text = verdict_text.report_text(better)
    assert "accuracy ok (better: Welch one-sided p = " in text
    assert "paired cells: 5 improved" in text


def test_not_shown_equivalent_is_inconclusive_naming_the_seeds_that_would_decide() -> None:
    """Two seeds a side, 0.5 points apart within each: neither equivalent nor different."""
    base, cand = [0.9780, 0.9830], [0.9770, 0.9820]
    result = compare.compare(
        _side("a", *_seeds(base)),
        _side("b", *_seeds(cand, "2.21.0", UPGRADED)),
        Settings(),
    )
    [accuracy] = result.accuracy
    assert (accuracy.method, accuracy.verdict) == ("not shown equivalent", "inconclusive")
    assert result.exit_code == compare.EXIT_INCONCLUSIVE
    found = accuracy.difference
    assert found is not None and found.spread == pytest.approx(0.5 / np.sqrt(2))
    # The margin less the difference, 0.2 points, first within reach at 65 seeds a side.
    assert found.seeds_needed == 65
    assert _reaches(65, found.spread, 0.2) and not _reaches(64, found.spread, 0.2)
    assert "about 65 seeds a side (--seeds 65) would show it equivalent" in (result.inconclusive[0])


def _reaches(n: int, spread: float, gap: float) -> bool:
    """Whether n seeds a side find a true difference `gap` from the null at alpha 0.01 with
    80% power, by the two-sample t formula."""
    df = 2 * n - 2
    return bool((t.ppf(0.99, df) + t.ppf(0.8, df)) * spread * np.sqrt(2 / n) <= gap)


def test_seeds_needed_by_the_formula() -> None:
    n = compare.seeds_needed(0.1, 0.2, 0.01)
    assert n == 7 and _reaches(7, 0.1, 0.2) and not _reaches(6, 0.1, 0.2)
    assert compare.seeds_needed(0.0, 0.2, 0.01) == 2
    assert compare.seeds_needed(0.1, 0.0, 0.01) is None  # on the margin: never shown
    assert compare.seeds_needed(5.0, 0.01, 0.01) is None  # beyond MOST_SEEDS


def test_one_seed_a_side_on_other_software_is_inconclusive() -> None:
    """Other bits and one seed a side: no spread to judge by (before: "outcome only", ok)."""
    result = compare.compare(
        _side("a", *_seeds(BASE[:1])), _side("b", *_seeds(BASE[:1], "2.21.0", UPGRADED)), Settings()
    )
    assert result.exit_code == compare.EXIT_INCONCLUSIVE
    assert "the equivalence test needs 2+ a side" in result.inconclusive[0]


def test_expected_software_is_listed_as_expected_and_the_table_reads_per_stage() -> None:
    """An upgrade's text: its framework versions marked expected, and a row per stage and
    backend with the accuracy verdict and means, the speed ratio and CI, and the verdict."""
    text = verdict_text.report_text(_upgrade([a - 0.0005 for a in BASE]))
    assert "  tensorflow/cpu framework_version: 2.20.0 -> 2.21.0 (expected)" in text
    lines = text.splitlines()
    start = lines.index("per stage and backend (on cpu):")
    header, _, row = lines[start + 1 : start + 4]
    assert header.split("  ")[0] == "stage" and header.endswith("speed ratio [95% CI]  verdict")
    assert row.split() == [
        "relu-xavier",
        "tensorflow",
        "equivalent",
        "±0.3",
        "97.92->97.87",
        "1.000",
        "[1.000,",
        "1.000]",
        "no",
        "change",
    ]
    assert max(len(line) for line in lines) <= verdict_text.WIDTH
    plain = verdict_text.report_text(_upgrade([a - 0.0005 for a in BASE], Settings()))
    assert "(expected)" not in plain
