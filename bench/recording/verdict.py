"""`bench compare`'s statistics: pair two invocations' cells, judge accuracy and speed, and give
a verdict (bench.recording.verdict_text writes it out).

Imports no mlflow: bench.commands.compare reads the store into the dataclasses below and records the
result. Everything here is a pure function of what was recorded, so it is tested with numbers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from bench.core.options import fingerprint_params, option_params
from bench.core.program import PROGRAM

EXIT_OK = 0
EXIT_REGRESSION = 1
EXIT_INCONCLUSIVE = 3  # 2 is bad input (bench.commands.cli.EXIT_USAGE)

DEFAULT_ALPHA = 0.01
DEFAULT_MAX_SLOWDOWN = 0.05
# How far one process's speed may sit from another's with nothing changed: the A/A study on the
# shared 2-core VM (README) saw single runs settle at 62-65k or 80-86k samples/s, ratios down to
# 0.72, with every busy-machine flag clear. Where a side has too few processes to measure this
# noise itself, a slowdown within it is not a regression but inconclusive.
DEFAULT_RUN_NOISE = 0.30
PEAK_DRIFT_LIMIT = 0.10  # a peak that moved more than this during a run: the machine changed
POWER = 0.8  # of the minimum detectable effect, and of the seeds an accuracy verdict needs
# How far apart two sides' mean test accuracies (in accuracy points) may be and still be
# "equivalent". Chosen from the stages' seed-to-seed spread (docs/compare.md, Accuracy): on the
# MNIST SGD stages it is 0.02-0.09 points, and five seeds a side then show equivalence at 0.3.
DEFAULT_EQUIVALENCE_MARGIN = 0.3
MOST_SEEDS = 1000  # beyond this many seeds a side, a margin is too narrow for the spread
BOOTSTRAP_SAMPLES = 4000
BOOTSTRAP_SEED = 0  # the CI is the same number every time it is printed

# Options that change the numbers computed: two sides that differ here compare different
# experiments, so compare refuses them. The speed-only ones may differ; they are what changed.
# Each field of Options says which it is.
NUMERIC_OPTIONS = option_params("results")
SPEED_OPTIONS = option_params("speed")
# A cell's fingerprint, from its env.* params (bench.execution.environment_of) and
# option.* params.
HARDWARE_KEYS = ("cpu_model", "cpu_isa", "cores_available", "gpu_model")
SOFTWARE_KEYS = (
    "framework_version",
    "numpy_version",
    "numpy_blas",
    "framework_blas",
    "torch_matmul",
    "python_version",
    "cuda_version",
    "cudnn_version",
    "onednn_opts",
    "intra_op_threads",
    "inter_op_threads",
    "dtype",
    "compute_dtype",
    "deterministic_ops",
    "tf32",
    "xla",
    "cuda_graphs",
)
# Read through bench.core.options.normalised: an older record's option.deterministic and
# option.xla appear under these names.
SOFTWARE_OPTIONS = fingerprint_params()
DATA_DIGEST = "data_sha256"  # the env param naming the arrays a cell trained and evaluated on
# A cell with no outcome tag was cut short ("killed": its run ended KILLED) or never closed
# ("unfinished": still running, or its recording broke): neither says how training went.
UNFINISHED = ("killed", "unfinished")

CellKey = tuple[str, str, str, int]  # stage, backend, device, seed


def cell_outcome(tags: dict[str, str], status: str) -> str:
    """A cell's outcome tag; without one, "failed" where it recorded an error, else "killed" or
    "unfinished" by its run's status (as bench.recording.run_report reads it)."""
    if "outcome" in tags:
        return tags["outcome"]
    if "error" in tags:
        return "failed"
    return "killed" if status == "KILLED" else "unfinished"


def trained_inputs(environment: dict[str, str], params: dict[str, str]) -> dict[str, str]:
    """Beside the stage file, what decides the numbers a cell computes: the data digest (where
    recorded) and the options that are neither speed-only nor part of the fingerprint."""
    listed = (*SPEED_OPTIONS, *SOFTWARE_OPTIONS)
    inputs = {k: v for k, v in params.items() if k.startswith("option.") and k not in listed}
    if environment.get(DATA_DIGEST):  # hand-made splits and older records have none
        inputs[DATA_DIGEST] = environment[DATA_DIGEST]
    return inputs


def cell_name(key: CellKey) -> str:
    stage, backend, device, seed = key
    return f"{stage}/{backend}/{device}/seed{seed}"


@dataclass(frozen=True)
class Fingerprint:
    """What a cell ran on (hardware) and with (software), as recorded."""

    hardware: dict[str, str]
    software: dict[str, str]

    @classmethod
    def of(cls, environment: dict[str, str], params: dict[str, str]) -> Fingerprint:
        hardware = {k: environment[k] for k in HARDWARE_KEYS if k in environment}
        software = {k: environment[k] for k in SOFTWARE_KEYS if k in environment}
        software |= {k: params[k] for k in SOFTWARE_OPTIONS if k in params}
        return cls(hardware, software)


@dataclass(frozen=True)
class JudgedCell:
    """What the verdict weighs of one recorded cell (a reader.RecordedCell): its pairing key,
    steady rates, step losses and what must match for a bitwise comparison."""

    key: CellKey
    run_id: str
    outcome: str
    test_accuracy: float | None
    rates: list[float]  # samples/s of each epoch after the first
    step_losses: np.ndarray | None
    fingerprint: Fingerprint
    spec: dict[str, str]  # the stage file's params (what was trained)
    deterministic: bool
    speed_stable: bool
    unstable_reason: str = ""
    inputs: dict[str, str] = field(default_factory=dict)  # trained_inputs()

    @property
    def finished(self) -> bool:
        return self.outcome not in UNFINISHED


@dataclass(frozen=True)
class Side:
    """One invocation (a parent run) and its cells."""

    run_id: str
    name: str
    experiment_id: str
    options: dict[str, str]
    cells: dict[CellKey, JudgedCell]
    speed_stable: bool = True
    peak_drift: dict[str, float] = field(default_factory=dict)
    status: str = "FINISHED"  # the parent run's: KILLED or FAILED where it was cut short
    kind: str = "matrix"  # `run` (matrix) or `perf`

    @property
    def finish_hint(self) -> str:
        """How to finish a cut-short invocation's cells."""
        if self.kind == "matrix":
            return f"finish it with `{PROGRAM} run --resume {self.run_id}`"
        return "run it again"


@dataclass(frozen=True)
class Settings:
    alpha: float = DEFAULT_ALPHA
    max_slowdown: float = DEFAULT_MAX_SLOWDOWN
    allow_busy: bool = False  # judge speed even where a run was flagged speed_stable false
    run_noise: float = DEFAULT_RUN_NOISE  # the slowdown one process a side cannot rule out
    # Accuracy points (0.3: 0.3 of 100%) within which two sides' mean accuracies are equivalent.
    equivalence_margin: float = DEFAULT_EQUIVALENCE_MARGIN
    # SOFTWARE_KEYS meant to differ (an upgrade's "framework_version"): listed as expected.
    expected_software: frozenset[str] = frozenset()


def steady_rates(
    epoch_seconds: Iterable[float], batch_size: int, train_examples: int
) -> list[float]:
    """Samples/s of each epoch after the first (the first traces and compiles), from the
    epoch_seconds history in epoch order and the size of the data set's training split; as
    bench.execution.runner.steady_rates computes them."""
    steps = train_examples // batch_size
    return [steps * batch_size / s for s in list(epoch_seconds)[1:] if s > 0]


def first_difference(base: np.ndarray, cand: np.ndarray) -> int | None:
    """The first step (1-based) whose loss differs bit for bit, or where one run stops; None
    when the two are identical. NaN equals NaN here: a divergence at the same step is the same."""
    common = min(len(base), len(cand))
    a = np.asarray(base[:common], dtype=np.float64).view(np.uint64)
    b = np.asarray(cand[:common], dtype=np.float64).view(np.uint64)
    differs = np.flatnonzero(a != b)
    if differs.size:
        return int(differs[0]) + 1
    return None if len(base) == len(cand) else common + 1


def min_exact_p(n_base: int, n_cand: int) -> float:
    """The smallest one-sided p-value an exact Mann-Whitney U test can give at these sizes:
    every candidate sample below every baseline one, 1 / C(n1 + n2, n1). Where it is above
    alpha, no amount of slowdown can be significant: too few samples."""
    if n_base == 0 or n_cand == 0:
        return 1.0
    return 1.0 / math.comb(n_base + n_cand, n_base)


def minimum_detectable_slowdown(
    base: list[float], cand: list[float], alpha: float, power: float = POWER
) -> float | None:
    """The smallest slowdown (a fraction) this cell's noise lets the test detect with the given
    power, or None where the sizes cannot reach alpha at all.

    The classic two-sample minimum detectable effect, on log throughput (so that it is a ratio):
        d = (t[1-alpha, df] + t[power, df]) * s_pooled * sqrt(1/n1 + 1/n2) * sqrt(pi/3)
    with df = n1 + n2 - 2 and s_pooled the pooled standard deviation of the log rates. The
    factor sqrt(pi/3) converts the t-test's figure to Mann-Whitney's: its asymptotic relative
    efficiency under normal noise is 3/pi, so it needs pi/3 times the samples for the same
    power. The slowdown is 1 - exp(-d).
    """
    from scipy.stats import t

    n1, n2 = len(base), len(cand)
    if min_exact_p(n1, n2) > alpha or n1 + n2 < 3:
        return None
    logs = [np.log(base), np.log(cand)]
    dof = n1 + n2 - 2
    pooled = math.sqrt(
        sum(float(np.var(x, ddof=1)) * (len(x) - 1) for x in logs if len(x) > 1) / dof
    )
    quantiles = float(t.ppf(1 - alpha, dof)) + float(t.ppf(power, dof))
    d = quantiles * pooled * math.sqrt(1 / n1 + 1 / n2) * math.sqrt(math.pi / 3)
    return 1.0 - math.exp(-d)


def bootstrap_ratio_ci(
    base: list[float],
    cand: list[float],
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """Percentile bootstrap 95% CI of median(candidate) / median(baseline), each side resampled
    on its own (they are independent runs); seeded so the same data prints the same CI."""
    rng = np.random.default_rng(seed)
    b = np.asarray(base, dtype=np.float64)
    c = np.asarray(cand, dtype=np.float64)
    base_medians = np.median(b[rng.integers(0, b.size, (samples, b.size))], axis=1)
    cand_medians = np.median(c[rng.integers(0, c.size, (samples, c.size))], axis=1)
    low, high = np.percentile(cand_medians / base_medians, [2.5, 97.5])
    return float(low), float(high)


@dataclass(frozen=True)
class SpeedResult:
    """One cell pair's throughput: candidate over baseline (below 1: slower)."""

    n_base: int
    n_cand: int
    base_median: float
    cand_median: float
    ratio: float
    ci_low: float
    ci_high: float
    p_value: float  # one-sided: the candidate slower
    detectable: float | None  # minimum detectable slowdown; None: too few samples
    verdict: str  # "regression", "ok", "too few samples", "within run noise"

    @property
    def slowdown(self) -> float:
        return 1.0 - self.ratio


def speed_test(
    base: list[float], cand: list[float], settings: Settings, floor: float = 0.0
) -> SpeedResult | None:
    """Mann-Whitney U (one-sided, the candidate slower) on throughput samples (the epochs of one
    process a side, or one median per process), the bootstrap CI of the ratio of medians, and
    the minimum detectable slowdown. A regression needs both p < alpha and a slowdown beyond
    max_slowdown and beyond `floor`, the noise between processes that the samples cannot show
    (0 where they are processes); a significant slowdown within the floor is "within run
    noise". None when a side has no sample at all."""
    from scipy.stats import mannwhitneyu

    if not base or not cand:
        return None
    ratio = float(np.median(cand) / np.median(base))
    low, high = bootstrap_ratio_ci(base, cand)
    p_value = float(mannwhitneyu(cand, base, alternative="less").pvalue)
    detectable = minimum_detectable_slowdown(base, cand, settings.alpha)
    if detectable is None:
        verdict = "too few samples"
    elif p_value < settings.alpha and 1.0 - ratio > max(settings.max_slowdown, floor):
        verdict = "regression"
    elif p_value < settings.alpha and 1.0 - ratio > settings.max_slowdown:
        verdict = "within run noise"
    else:
        verdict = "ok"
    return SpeedResult(
        n_base=len(base),
        n_cand=len(cand),
        base_median=float(np.median(base)),
        cand_median=float(np.median(cand)),
        ratio=ratio,
        ci_low=low,
        ci_high=high,
        p_value=p_value,
        detectable=detectable,
        verdict=verdict,
    )


def _welch(base: list[float], cand: list[float]) -> tuple[float, float, float]:
    """The difference of the means (candidate - baseline), its standard error and the
    Welch-Satterthwaite degrees of freedom (infinite where neither side has spread)."""
    share_b = float(np.var(base, ddof=1)) / len(base)
    share_c = float(np.var(cand, ddof=1)) / len(cand)
    error = math.sqrt(share_b + share_c)
    if error == 0:
        return float(np.mean(cand) - np.mean(base)), 0.0, math.inf
    dof = (share_b + share_c) ** 2 / (share_b**2 / (len(base) - 1) + share_c**2 / (len(cand) - 1))
    return float(np.mean(cand) - np.mean(base)), error, dof


def _below_p(statistic: float, error: float, dof: float) -> float:
    """One-sided p-value that the true value is below the null, for a t statistic
    (statistic / error); where there is no spread the sign decides (0.0 or 1.0)."""
    from scipy.stats import t

    if error == 0:
        return 0.0 if statistic < 0 else 1.0
    return float(t.cdf(statistic / error, dof))


@dataclass(frozen=True)
class AccuracyDifference:
    """The candidate's mean test accuracy against the baseline's over seeds, in accuracy
    points: two one-sided Welch tests against +-margin (TOST), and one-sided Welch tests for
    worse and better."""

    n_base: int
    n_cand: int
    difference: float  # candidate mean - baseline mean
    ci_low: float  # the (1 - 2 alpha) CI of the difference: within +-margin is TOST at alpha
    ci_high: float
    spread: float  # one seed's standard deviation, pooled over both sides
    margin: float
    p_equivalent: float  # the larger of TOST's two one-sided p-values
    p_worse: float
    p_better: float
    verdict: str  # "equivalent", "worse", "better" or "not shown equivalent"
    seeds_needed: int | None  # a side, to decide a "not shown equivalent"; None: too many


def accuracy_difference(
    base: list[float], cand: list[float], margin: float, alpha: float
) -> AccuracyDifference | None:
    """TOST and the one-sided tests on test accuracies (fractions), the margin in points;
    None with fewer than 2 seeds a side (no spread to test against). Equivalence is decided
    first: a significant difference within the margin is equivalent, not worse."""
    from scipy.stats import t

    if len(base) < 2 or len(cand) < 2:
        return None
    b, c = [100 * x for x in base], [100 * x for x in cand]
    difference, error, dof = _welch(b, c)
    half = 0.0 if error == 0 else float(t.ppf(1 - alpha, dof)) * error
    p_worse = _below_p(difference, error, dof)
    p_better = _below_p(-difference, error, dof)
    # H0 difference <= -margin, and H0 difference >= +margin: both rejected is equivalence.
    p_equivalent = max(
        _below_p(-(difference + margin), error, dof), _below_p(difference - margin, error, dof)
    )
    found = [
        word
        for word, p in (("equivalent", p_equivalent), ("worse", p_worse), ("better", p_better))
        if p < alpha
    ]
    verdict = found[0] if found else "not shown equivalent"
    spread = math.sqrt(
        (float(np.var(b, ddof=1)) * (len(b) - 1) + float(np.var(c, ddof=1)) * (len(c) - 1))
        / (len(b) + len(c) - 2)
    )
    # To show equivalence, the CI must shrink inside the margin; to show a difference beyond
    # it, away from zero.
    gap = margin - abs(difference) if abs(difference) < margin else abs(difference)
    return AccuracyDifference(
        n_base=len(b),
        n_cand=len(c),
        difference=difference,
        ci_low=difference - half,
        ci_high=difference + half,
        spread=spread,
        margin=margin,
        p_equivalent=p_equivalent,
        p_worse=p_worse,
        p_better=p_better,
        verdict=verdict,
        seeds_needed=seeds_needed(spread, gap, alpha),
    )


def seeds_needed(
    spread: float, gap: float, alpha: float, power: float = POWER, most: int = MOST_SEEDS
) -> int | None:
    """The fewest seeds a side with which a one-sided test at alpha finds, with the given
    power, a true difference `gap` away from its null, one seed's accuracy `spread` apart:
        (t[1-alpha, df] + t[power, df]) * spread * sqrt(2 / n) <= gap,   df = 2n - 2
    (the classic two-sample size, as minimum_detectable_slowdown's). None beyond `most`."""
    from scipy.stats import t

    if gap <= 0:
        return None
    for n in range(2, most + 1):
        dof = 2 * n - 2
        quantiles = float(t.ppf(1 - alpha, dof)) + float(t.ppf(power, dof))
        if quantiles * spread * math.sqrt(2 / n) <= gap:
            return n
    return None


@dataclass(frozen=True)
class AccuracyResult:
    """One stage x backend x device: outcome classes, then bit-identity, then TOST and the
    one-sided Welch tests over seeds."""

    group: str
    # "outcome" or "worse" (verdict "regression"), "bit-identical" (ok, or a regression where
    # nothing else changed), "equivalent" or "better" (ok), "not shown equivalent"
    # (inconclusive), "none" (not judged)
    method: str
    verdict: str  # "ok", "regression", "inconclusive", "not judged"
    detail: str
    base_mean: float | None = None
    cand_mean: float | None = None
    p_value: float | None = None  # the test that decided: TOST, worse or better
    difference: AccuracyDifference | None = None


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def accuracy_test(pairs: list[tuple[JudgedCell, JudgedCell]], settings: Settings) -> AccuracyResult:
    """The accuracy verdict of one stage x backend x device group's paired cells: a changed
    outcome class is a regression; losses the same bits are bit-identical, whatever software
    ran them; losses that differ where nothing else did are a regression; else the seeds'
    test accuracies decide (equivalent, better, worse or not shown equivalent)."""
    stage, backend, device, _ = pairs[0][0].key
    group = f"{stage}/{backend}/{device}"
    changed = [
        f"{cell_name(b.key)} {b.outcome} -> {c.outcome}" for b, c in pairs if b.outcome != c.outcome
    ]
    base = [b.test_accuracy for b, _ in pairs if b.test_accuracy is not None]
    cand = [c.test_accuracy for _, c in pairs if c.test_accuracy is not None]
    means = (_mean(base), _mean(cand))
    if changed:
        return AccuracyResult(group, "outcome", "regression", "; ".join(changed), *means)
    note = ""
    if all(_bitwise_comparable(b, c) for b, c in pairs):
        decided, note = _by_bits(group, pairs, means)
        if decided is not None:
            return decided
    return _accuracy_by_seeds(group, base, cand, settings, note, means)


def _by_bits(
    group: str,
    pairs: list[tuple[JudgedCell, JudgedCell]],
    means: tuple[float | None, float | None],
) -> tuple[AccuracyResult | None, str]:
    """A deterministic group's verdict by its step losses' bits, or None and a note for the
    seeds' verdict where the bits cannot decide: they differ, and so did what the cells ran
    with; or they match and the test accuracies do not (the same training evaluated by
    other kernels)."""
    across = _across(pairs)
    differs = _loss_difference(pairs)
    if differs is not None:
        if not across:  # nothing the cells ran with changed: the bits must match
            return AccuracyResult(group, "bit-identical", "regression", differs, *means), ""
        return None, f" ({differs} across {across})"
    if any(b.test_accuracy != c.test_accuracy for b, c in pairs):
        return None, " (step losses bit-identical, test accuracies not)"
    detail = f"step losses bit-identical ({len(pairs)} seed(s))"
    detail += f" across {across}" if across else ""
    return AccuracyResult(group, "bit-identical", "ok", detail, *means), ""


def _accuracy_by_seeds(
    group: str,
    base: list[float],
    cand: list[float],
    settings: Settings,
    note: str,
    means: tuple[float | None, float | None],
) -> AccuracyResult:
    """A group's verdict from its seeds' test accuracies (TOST, then worse or better)."""
    found = accuracy_difference(base, cand, settings.equivalence_margin, settings.alpha)
    if found is None:
        detail = (
            f"not shown equivalent: {len(base)} vs {len(cand)} seed(s), and the equivalence"
            " test needs 2+ a side to measure their spread (--seeds 5 also judges speed over"
            f" processes){note}"
        )
        return AccuracyResult(group, "not shown equivalent", "inconclusive", detail, *means)
    verdict = {"worse": "regression", "not shown equivalent": "inconclusive"}
    p_value = {
        "equivalent": found.p_equivalent,
        "worse": found.p_worse,
        "better": found.p_better,
    }.get(found.verdict)
    return AccuracyResult(
        group,
        found.verdict,
        verdict.get(found.verdict, "ok"),
        difference_detail(found, settings.alpha) + note,
        *means,
        p_value=p_value,
        difference=found,
    )


def difference_detail(found: AccuracyDifference, alpha: float) -> str:
    """What decided a group by its seeds, with the difference, its CI, the margin and, where
    nothing did, how many seeds a side would."""
    level = f"{1 - 2 * alpha:.0%}"
    figures = (
        f"difference {found.difference:+.2f} pp, {level} CI {found.ci_low:+.2f} to"
        f" {found.ci_high:+.2f}, margin ±{found.margin:g} pp, {found.n_base} vs {found.n_cand}"
        " seeds"
    )
    if found.verdict == "equivalent":
        return f"equivalent within ±{found.margin:g} pp: {figures}"
    if found.verdict in ("worse", "better"):
        p_value = found.p_worse if found.verdict == "worse" else found.p_better
        return f"{found.verdict}: Welch one-sided p = {p_value:.2g}; {figures}"
    goal = "worse" if found.difference < 0 else "better"
    goal = "equivalent" if abs(found.difference) < found.margin else goal
    need = (
        f"about {found.seeds_needed} seeds a side (--seeds {found.seeds_needed}) would show it"
        f" {goal}"
        if found.seeds_needed is not None
        else f"more than {MOST_SEEDS} seeds a side would be needed: widen --equivalence-margin"
    )
    return (
        f"not shown equivalent: {figures}, spread {found.spread:.2f} pp a seed; {need}"
        f" at {POWER:.0%} power"
    )


def _loss_difference(pairs: list[tuple[JudgedCell, JudgedCell]]) -> str | None:
    """Where the first pair whose step losses differ bit for bit differs; None: none does."""
    for b, c in pairs:
        assert b.step_losses is not None and c.step_losses is not None
        step = first_difference(b.step_losses, c.step_losses)
        if step is not None:
            return f"{cell_name(b.key)}: step losses differ from step {step}"
    return None


def _across(pairs: list[tuple[JudgedCell, JudgedCell]]) -> str:
    """What the cells ran with that differs between the sides, as "torch 2.12.0 -> 2.13.0,
    numpy_version 2.4 -> 2.5" (a framework's version under its backend's name); "": nothing."""
    found: dict[str, None] = {}
    for part in ("software", "hardware"):
        for name, (old, new) in _fingerprint_changes(pairs, part).items():
            where, key = name.split(" ", 1)
            key = where.split("/")[0] if key == "framework_version" else key
            found[f"{key} {old} -> {new}"] = None
    return ", ".join(found)


def _bitwise_comparable(base: JudgedCell, cand: JudgedCell) -> bool:
    """Deterministic both, the same stage file, losses recorded: their bits can be compared,
    whatever software or hardware each ran on (whether they must match is the caller's)."""
    return (
        base.deterministic
        and cand.deterministic
        and base.spec == cand.spec
        and base.step_losses is not None
        and cand.step_losses is not None
    )


@dataclass(frozen=True)
class PairResult:
    key: CellKey
    base: JudgedCell
    cand: JudgedCell
    speed: SpeedResult | None  # over the pair's epochs
    by_processes: bool = False  # its group's speed is judged over processes instead
    not_judged: str = ""  # why neither its accuracy nor its speed is judged ("": judged)


@dataclass(frozen=True)
class GroupSpeed:
    """A stage x backend x device group's speed over processes: each cell's median samples/s
    one sample. The process, not the epoch, is the unit that replicates a run's speed."""

    group: str
    speed: SpeedResult


def process_medians(cells: Iterable[JudgedCell]) -> list[float]:
    return [float(np.median(c.rates)) for c in cells if c.rates]


def group_speed(
    group: str, pairs: list[tuple[JudgedCell, JudgedCell]], settings: Settings
) -> GroupSpeed | None:
    """The group's speed over processes, or None where the exact test could not reach alpha
    with its processes (fewer than 5 a side at 0.01): then each cell is judged on its epochs
    against the run-noise floor."""
    base = process_medians(b for b, _ in pairs)
    cand = process_medians(c for _, c in pairs)
    if min_exact_p(len(base), len(cand)) > settings.alpha:
        return None
    result = speed_test(base, cand, settings)
    return None if result is None else GroupSpeed(group, result)


def group_of(key: CellKey) -> str:
    return "/".join(str(p) for p in key[:3])


@dataclass
class Comparison:
    """The whole verdict, and everything printed and recorded with it."""

    baseline: Side
    candidate: Side
    settings: Settings
    pairs: list[PairResult]
    groups: list[GroupSpeed]
    accuracy: list[AccuracyResult]
    unpaired_base: list[CellKey]
    unpaired_cand: list[CellKey]
    option_changes: dict[str, tuple[str, str]]
    software_changes: dict[str, tuple[str, str]]
    hardware_changes: dict[str, tuple[str, str]]
    trained_changes: dict[str, tuple[str, str]]  # stage file, data, options that change numbers
    inconclusive: list[str]
    regressions: list[str]
    # Runs flagged speed_stable false, a peak that moved: inconclusive unless --allow-busy.
    speed_flags: list[str] = field(default_factory=list)
    too_few: list[str] = field(default_factory=list)  # those of `inconclusive` for few samples
    # Why no speed was judged: "" (judged), "hardware" (it differs) or "busy" (flags, no
    # --allow-busy). Each row then says so, not the "ok" its figures alone would give.
    speed_unjudged: str = ""

    @property
    def exit_code(self) -> int:
        if self.regressions:
            return EXIT_REGRESSION
        return EXIT_INCONCLUSIVE if self.inconclusive else EXIT_OK

    @property
    def verdict(self) -> str:
        return {EXIT_OK: "no regression", EXIT_REGRESSION: "regression"}.get(
            self.exit_code, "inconclusive"
        )


def changes(
    base: dict[str, str], cand: dict[str, str], keys: Iterable[str]
) -> dict[str, tuple[str, str]]:
    """key -> (baseline, candidate) for the keys whose values differ ("-": not recorded)."""
    return {
        k: (base.get(k, "-"), cand.get(k, "-"))
        for k in keys
        if base.get(k, "-") != cand.get(k, "-")
    }


def numeric_option_mismatch(base: Side, cand: Side) -> dict[str, tuple[str, str]]:
    return changes(base.options, cand.options, NUMERIC_OPTIONS)


def _fingerprint_changes(
    pairs: list[tuple[JudgedCell, JudgedCell]], part: str
) -> dict[str, tuple[str, str]]:
    """Differences of one part (hardware or software) over all pairs, named by backend where
    the value is a framework's."""
    found: dict[str, tuple[str, str]] = {}
    for b, c in pairs:
        old, new = getattr(b.fingerprint, part), getattr(c.fingerprint, part)
        for key, values in changes(old, new, sorted(set(old) | set(new))).items():
            found[f"{b.key[1]}/{b.key[2]} {key}"] = values
    return found


def _trained_changes(pairs: list[tuple[JudgedCell, JudgedCell]]) -> dict[str, tuple[str, str]]:
    """What was trained that differs, named by stage: its stage file's params (epochs
    included), the data digest and the options that change the numbers computed."""
    found: dict[str, tuple[str, str]] = {}
    for b, c in pairs:
        for part in ("spec", "inputs"):
            old, new = getattr(b, part), getattr(c, part)
            if part == "inputs" and not (DATA_DIGEST in old and DATA_DIGEST in new):
                # a cell cut short records no digest: not a difference
                old, new = _without(old, DATA_DIGEST), _without(new, DATA_DIGEST)
            for key, values in changes(old, new, sorted(set(old) | set(new))).items():
                found[f"{b.key[0]} {key}"] = values
    return found


def _without(values: dict[str, str], key: str) -> dict[str, str]:
    return {k: v for k, v in values.items() if k != key}


def _not_judged(base: JudgedCell, cand: JudgedCell) -> str:
    """Why a pair cannot be judged: a cell that did not finish, or other training."""
    sides = (("baseline", base), ("candidate", cand))
    unfinished = [f"{c.outcome} in the {role}" for role, c in sides if not c.finished]
    if unfinished:
        return " and ".join(unfinished)
    if _trained_changes([(base, cand)]):
        return "what was trained differs"
    return ""


def _cut_short(side: Side, role: str, cells: Iterable[JudgedCell], not_run: int) -> list[str]:
    """Why one side's cells cannot all be judged: its run ended KILLED or FAILED, or cells of
    it that did not finish; the advice to finish them."""
    names = [f"{cell_name(c.key)} {c.outcome}" for c in cells if not c.finished]
    if side.status == "FINISHED" and not names:
        return []
    ended = f" ended {side.status}" if side.status != "FINISHED" else ""
    what = [", ".join(names) + " (not judged)"] if names else []
    if ended and not_run:
        what.append(f"{not_run} cell(s) of the other side not run")
    told = "; ".join(what) or "its cells that ran finished"
    return [f"{role} run {side.run_id}{ended}: {told}; {side.finish_hint} and compare again"]


def _speed_flags(side: Side, role: str, cells: Iterable[JudgedCell]) -> list[str]:
    """Why a side's timings cannot be trusted: a peak that moved, a run flagged unstable."""
    flags = [
        f"{role}: peak {name} moved {drift:+.0%} during the run (limit {PEAK_DRIFT_LIMIT:.0%})"
        for name, drift in side.peak_drift.items()
        if abs(drift) > PEAK_DRIFT_LIMIT
    ]
    if not side.speed_stable:
        flags.append(f"{role}: run {side.run_id} is tagged speed_stable false")
    for cell in cells:
        if not cell.speed_stable:
            reason = f" ({cell.unstable_reason})" if cell.unstable_reason else ""
            flags.append(f"{role}: {cell_name(cell.key)} speed not stable{reason}")
    return flags


def _slower(s: SpeedResult) -> str:
    """How much slower, with the ratio, its CI and p (the closing parenthesis is the caller's)."""
    return (
        f"{s.slowdown:.1%} slower (ratio {s.ratio:.3f}, 95% CI {s.ci_low:.3f}-{s.ci_high:.3f},"
        f" p = {s.p_value:.2g}"
    )


def _speed_lines(
    pairs: list[PairResult], groups: list[GroupSpeed], settings: Settings
) -> tuple[list[str], list[str], list[str]]:
    """Speed's regressions, slowdowns within the run noise, and cells with too few samples:
    per group over processes where it has enough, else per cell over its epochs against the
    run-noise floor."""
    regressions: list[str] = []
    within_noise: list[str] = []
    too_few: list[str] = []
    for group in groups:
        s = group.speed
        if s.verdict == "regression":
            regressions.append(
                f"speed {group.group} over {s.n_base} vs {s.n_cand} processes: {_slower(s)})"
            )
    for pair in (p for p in pairs if not p.by_processes and not p.not_judged):
        name, speed = cell_name(pair.key), pair.speed
        if speed is None:
            too_few.append(f"{name}: no throughput samples")
        elif speed.verdict == "too few samples":
            too_few.append(
                f"{name}: too few samples ({speed.n_base} vs {speed.n_cand} epochs after the"
                f" first) for p < {settings.alpha:g}"
            )
        elif speed.verdict == "within run noise":
            within_noise.append(
                f"{name}: {speed.slowdown:.1%} slower (p = {speed.p_value:.2g} over its epochs),"
                f" within the {settings.run_noise:.0%} that one process's speed can move with"
                " nothing changed (--run-noise); judge over processes: 5+ seeds a side"
            )
        elif speed.verdict == "regression":
            regressions.append(
                f"speed {name}: {_slower(speed)}; beyond the {settings.run_noise:.0%} run noise)"
            )
    return regressions, within_noise, too_few


def compare(baseline: Side, candidate: Side, settings: Settings) -> Comparison:
    """Pair the cells by stage, backend, device and seed, and judge each pair and group. A pair
    with a cell that did not finish, or that trained something else, is shown, not judged."""
    keys = [k for k in baseline.cells if k in candidate.cells]
    matched = [(baseline.cells[k], candidate.cells[k]) for k in keys]
    reasons = {b.key: _not_judged(b, c) for b, c in matched}
    judged = [(b, c) for b, c in matched if not reasons[b.key]]
    finished = [(b, c) for b, c in matched if b.finished and c.finished]
    hardware = _fingerprint_changes(finished, "hardware")
    by_group: dict[str, list[tuple[JudgedCell, JudgedCell]]] = {}
    for b, c in judged:
        by_group.setdefault(group_of(b.key), []).append((b, c))
    found = (group_speed(name, members, settings) for name, members in by_group.items())
    groups = [g for g in found if g is not None]
    over_processes = {g.group for g in groups}
    pairs = [
        PairResult(
            k,
            b,
            c,
            speed_test(b.rates, c.rates, settings, floor=settings.run_noise),
            by_processes=group_of(k) in over_processes,
            not_judged=reasons[k],
        )
        for k, (b, c) in zip(keys, matched, strict=True)
    ]
    accuracy = _accuracy(pairs, by_group, settings)

    inconclusive = _unjudged_lines(baseline, candidate, matched)
    if hardware:
        inconclusive.append("hardware differs: " + ", ".join(hardware))
    inconclusive += [
        f"accuracy {a.group}: {a.detail}" for a in accuracy if a.verdict == "inconclusive"
    ]
    flags = _speed_flags(baseline, "baseline", (b for b, _ in judged))
    flags += _speed_flags(candidate, "candidate", (c for _, c in judged))
    speed_judged = not hardware and (settings.allow_busy or not flags)
    if not settings.allow_busy:
        inconclusive += flags
    regressions = [f"accuracy {a.group}: {a.detail}" for a in accuracy if a.verdict == "regression"]
    slower, within_noise, too_few = _speed_lines(pairs, groups, settings)
    if speed_judged:
        regressions += slower
        inconclusive += within_noise
    inconclusive += too_few
    return Comparison(
        baseline=baseline,
        candidate=candidate,
        settings=settings,
        pairs=pairs,
        groups=groups,
        accuracy=accuracy,
        unpaired_base=[k for k in baseline.cells if k not in candidate.cells],
        unpaired_cand=[k for k in candidate.cells if k not in baseline.cells],
        option_changes=changes(baseline.options, candidate.options, SPEED_OPTIONS),
        software_changes=_fingerprint_changes(finished, "software"),
        hardware_changes=hardware,
        trained_changes=_trained_changes(matched),
        inconclusive=inconclusive,
        regressions=regressions,
        speed_flags=flags,
        too_few=too_few,
        speed_unjudged="" if speed_judged else ("hardware" if hardware else "busy"),
    )


def _accuracy(
    pairs: list[PairResult],
    judged: dict[str, list[tuple[JudgedCell, JudgedCell]]],
    settings: Settings,
) -> list[AccuracyResult]:
    """Each group's accuracy over its judged pairs; "not judged", with why, where it has none."""
    results = []
    for group in dict.fromkeys(group_of(p.key) for p in pairs):
        if group in judged:
            results.append(accuracy_test(judged[group], settings))
            continue
        members = [p for p in pairs if group_of(p.key) == group]
        why = "; ".join(f"{cell_name(p.key)} {p.not_judged}" for p in members)
        results.append(AccuracyResult(group, "none", "not judged", why))
    return results


def _unjudged_lines(
    baseline: Side, candidate: Side, matched: list[tuple[JudgedCell, JudgedCell]]
) -> list[str]:
    """The reasons some pairs were not judged: a side cut short, other training."""
    lines = _cut_short(
        baseline, "baseline", (b for b, _ in matched), len(candidate.cells) - len(matched)
    )
    lines += _cut_short(
        candidate, "candidate", (c for _, c in matched), len(baseline.cells) - len(matched)
    )
    trained = _trained_changes(matched)
    if trained:
        what = ", ".join(f"{k} {old} -> {new}" for k, (old, new) in trained.items())
        lines.append(
            f"what was trained differs ({what}): those cells are not judged; compare runs of"
            " the same stage files, epochs and data"
        )
    return lines
