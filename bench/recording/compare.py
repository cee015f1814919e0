"""`bench compare`: pair two invocations' cells, judge accuracy and speed, and give a verdict.

Imports no mlflow: bench.commands.compare reads the store into the dataclasses below and records the
result. Everything here is a pure function of what was recorded, so it is tested with numbers.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

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
POWER = 0.8  # of the minimum detectable effect
BOOTSTRAP_SAMPLES = 4000
BOOTSTRAP_SEED = 0  # the CI is the same number every time it is printed

# Options that change the numbers computed: two sides that differ here compare different
# experiments, so compare refuses them. The speed-only ones may differ; they are what changed.
NUMERIC_OPTIONS = ("option.dtype", "option.parity", "option.accumulate")
SPEED_OPTIONS = (
    "option.threads",
    "option.inter_op_threads",
    "option.no_xla",
    "option.tf32",
    "option.cuda_graphs",
    "option.torch_matmul",
)
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
SOFTWARE_OPTIONS = ("option.threads", "option.dtype", "option.nondeterministic", "option.no_xla")
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
class CellData:
    """One recorded cell, as compare needs it."""

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
    cells: dict[CellKey, CellData]
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


def welch_less_p(base: list[float], cand: list[float]) -> float | None:
    """One-sided Welch t-test p-value that the candidate's mean accuracy is below the
    baseline's; None with fewer than 2 values a side. Where both sides have no spread the test
    is undefined: the means decide (1.0 or 0.0)."""
    from scipy.stats import ttest_ind

    if len(base) < 2 or len(cand) < 2:
        return None
    if np.var(base) == 0 and np.var(cand) == 0:
        return 0.0 if np.mean(cand) < np.mean(base) else 1.0
    return float(ttest_ind(cand, base, equal_var=False, alternative="less").pvalue)


@dataclass(frozen=True)
class AccuracyResult:
    """One stage x backend x device: outcome classes, then bit-identity or a Welch test."""

    group: str
    method: str  # "bit-identical", "welch", "outcome only"
    verdict: str  # "ok", "regression"
    detail: str
    base_mean: float | None = None
    cand_mean: float | None = None
    p_value: float | None = None


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def accuracy_test(pairs: list[tuple[CellData, CellData]], settings: Settings) -> AccuracyResult:
    """The accuracy verdict of one stage x backend x device group's paired cells."""
    stage, backend, device, _ = pairs[0][0].key
    group = f"{stage}/{backend}/{device}"
    changed = [
        f"{cell_name(b.key)} {b.outcome} -> {c.outcome}" for b, c in pairs if b.outcome != c.outcome
    ]
    base = [b.test_accuracy for b, _ in pairs if b.test_accuracy is not None]
    cand = [c.test_accuracy for _, c in pairs if c.test_accuracy is not None]
    means = {"base_mean": _mean(base), "cand_mean": _mean(cand)}
    if changed:
        return AccuracyResult(group, "outcome", "regression", "; ".join(changed), **means)
    if all(_bitwise_comparable(b, c) for b, c in pairs):
        for b, c in pairs:
            assert b.step_losses is not None and c.step_losses is not None
            step = first_difference(b.step_losses, c.step_losses)
            if step is not None:
                detail = f"{cell_name(b.key)}: step losses differ from step {step}"
                return AccuracyResult(group, "bit-identical", "regression", detail, **means)
        detail = f"step losses bit-identical ({len(pairs)} seed(s))"
        return AccuracyResult(group, "bit-identical", "ok", detail, **means)
    p_value = welch_less_p(base, cand)
    if p_value is None:
        detail = "outcome class only: the Welch test needs 2+ seeds a side"
        return AccuracyResult(group, "outcome only", "ok", detail, **means)
    verdict = "regression" if p_value < settings.alpha else "ok"
    detail = f"Welch one-sided p = {p_value:.3g} over {len(base)} vs {len(cand)} seeds"
    return AccuracyResult(group, "welch", verdict, detail, p_value=p_value, **means)


def _bitwise_comparable(base: CellData, cand: CellData) -> bool:
    """Same fingerprint, same stage file, deterministic both: the losses must be the same bits."""
    return (
        base.deterministic
        and cand.deterministic
        and base.fingerprint == cand.fingerprint
        and base.spec == cand.spec
        and base.step_losses is not None
        and cand.step_losses is not None
    )


@dataclass(frozen=True)
class PairResult:
    key: CellKey
    base: CellData
    cand: CellData
    speed: SpeedResult | None  # over the pair's epochs
    by_processes: bool = False  # its group's speed is judged over processes instead
    not_judged: str = ""  # why neither its accuracy nor its speed is judged ("": judged)


@dataclass(frozen=True)
class GroupSpeed:
    """A stage x backend x device group's speed over processes: each cell's median samples/s
    one sample. The process, not the epoch, is the unit that replicates a run's speed."""

    group: str
    speed: SpeedResult


def process_medians(cells: Iterable[CellData]) -> list[float]:
    return [float(np.median(c.rates)) for c in cells if c.rates]


def group_speed(
    group: str, pairs: list[tuple[CellData, CellData]], settings: Settings
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


def _group_of(key: CellKey) -> str:
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
    pairs: list[tuple[CellData, CellData]], part: str
) -> dict[str, tuple[str, str]]:
    """Differences of one part (hardware or software) over all pairs, named by backend where
    the value is a framework's."""
    found: dict[str, tuple[str, str]] = {}
    for b, c in pairs:
        old, new = getattr(b.fingerprint, part), getattr(c.fingerprint, part)
        for key, values in changes(old, new, sorted(set(old) | set(new))).items():
            found[f"{b.key[1]}/{b.key[2]} {key}"] = values
    return found


def _trained_changes(pairs: list[tuple[CellData, CellData]]) -> dict[str, tuple[str, str]]:
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


def _not_judged(base: CellData, cand: CellData) -> str:
    """Why a pair cannot be judged: a cell that did not finish, or other training."""
    sides = (("baseline", base), ("candidate", cand))
    unfinished = [f"{c.outcome} in the {role}" for role, c in sides if not c.finished]
    if unfinished:
        return " and ".join(unfinished)
    if _trained_changes([(base, cand)]):
        return "what was trained differs"
    return ""


def _cut_short(side: Side, role: str, cells: Iterable[CellData], not_run: int) -> list[str]:
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


def _speed_flags(side: Side, role: str, cells: Iterable[CellData]) -> list[str]:
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
    by_group: dict[str, list[tuple[CellData, CellData]]] = {}
    for b, c in judged:
        by_group.setdefault(_group_of(b.key), []).append((b, c))
    found = (group_speed(name, members, settings) for name, members in by_group.items())
    groups = [g for g in found if g is not None]
    over_processes = {g.group for g in groups}
    pairs = [
        PairResult(
            k,
            b,
            c,
            speed_test(b.rates, c.rates, settings, floor=settings.run_noise),
            by_processes=_group_of(k) in over_processes,
            not_judged=reasons[k],
        )
        for k, (b, c) in zip(keys, matched, strict=True)
    ]
    accuracy = _accuracy(pairs, by_group, settings)

    inconclusive = _unjudged_lines(baseline, candidate, matched)
    if hardware:
        inconclusive.append("hardware differs: " + ", ".join(hardware))
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
    judged: dict[str, list[tuple[CellData, CellData]]],
    settings: Settings,
) -> list[AccuracyResult]:
    """Each group's accuracy over its judged pairs; "not judged", with why, where it has none."""
    results = []
    for group in dict.fromkeys(_group_of(p.key) for p in pairs):
        if group in judged:
            results.append(accuracy_test(judged[group], settings))
            continue
        members = [p for p in pairs if _group_of(p.key) == group]
        why = "; ".join(f"{cell_name(p.key)} {p.not_judged}" for p in members)
        results.append(AccuracyResult(group, "none", "not judged", why))
    return results


def _unjudged_lines(
    baseline: Side, candidate: Side, matched: list[tuple[CellData, CellData]]
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


# ---- what is printed and recorded -------------------------------------------------------------
# compare.txt is printed, kept as an artifact and shown in the run's description, where a longer
# line widens the whole page (one of 420 characters made it 3,265 px wide, the tags off-screen).
WIDTH = 100
STATUSES = ("regression", "inconclusive", "no change")  # a cell's part in the verdict
DIRECTION = (
    "ratio = candidate / baseline median samples/s: above 1 the candidate is faster, below 1 slower"
)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _rate(value: float) -> str:
    return f"{value:,.0f}"


def _optional(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _wrapped(text: str) -> list[str]:
    """One paragraph in lines of at most WIDTH, the lines after the first indented; "p = 0.004"
    is kept on one line (held together by a character no text here holds)."""
    lines = textwrap.wrap(
        text.replace(" = ", "\0=\0"),
        WIDTH,
        subsequent_indent="  ",
        break_long_words=False,
        break_on_hyphens=False,
    )
    return [line.replace("\0", " ") for line in lines]


def speed_word(comparison: Comparison, pair: PairResult) -> str:
    """A cell's speed column: its own test's answer, its group's ("by group: ok"), or why it
    was not judged; never "ok" for a speed that the verdict did not judge."""
    if pair.not_judged:
        return "not judged"
    if pair.by_processes:
        group = next(g for g in comparison.groups if g.group == _group_of(pair.key))
        word = f"by group: {group.speed.verdict}"
    elif pair.speed is None:
        return "no samples"
    elif pair.speed.verdict == "too few samples":
        return pair.speed.verdict
    else:
        word = pair.speed.verdict
    return f"not judged ({comparison.speed_unjudged})" if comparison.speed_unjudged else word


def cell_status(comparison: Comparison, pair: PairResult) -> str:
    """A paired cell's part in the verdict (one of STATUSES): a regression of its accuracy
    group or its speed, a check that could not be made, or nothing found."""
    accuracy = next(a for a in comparison.accuracy if a.group == _group_of(pair.key)).verdict
    speed = speed_word(comparison, pair)
    if "regression" in (accuracy, speed.removeprefix("by group: ")):
        return "regression"
    if accuracy == "ok" and speed in ("ok", "by group: ok"):
        return "no change"
    return "inconclusive"


def _speed_columns(speed: SpeedResult | None) -> dict[str, str]:
    return {
        "samples_per_s_base": "-" if speed is None else _rate(speed.base_median),
        "samples_per_s_cand": "-" if speed is None else _rate(speed.cand_median),
        "ratio": "-" if speed is None else f"{speed.ratio:.3f}",
        "ci95_low": "-" if speed is None else f"{speed.ci_low:.3f}",
        "ci95_high": "-" if speed is None else f"{speed.ci_high:.3f}",
        "p_value": "-" if speed is None else f"{speed.p_value:.2g}",
        "n": "-" if speed is None else f"{speed.n_base}/{speed.n_cand}",
        "detectable_slowdown": "-" if speed is None else _pct(speed.detectable),
    }


def _group_status(comparison: Comparison, group: GroupSpeed) -> tuple[str, str]:
    """A group judged over processes: its speed column and its part in the verdict."""
    if comparison.speed_unjudged:
        return f"not judged ({comparison.speed_unjudged})", "inconclusive"
    verdict = group.speed.verdict
    return verdict, "regression" if verdict == "regression" else "no change"


def group_rows(comparison: Comparison) -> list[dict[str, str]]:
    """One row per group judged over processes (n: processes a side)."""
    rows = []
    for group in comparison.groups:
        speed, status = _group_status(comparison, group)
        figures = _speed_columns(group.speed)
        rows.append({"group": group.group, **figures, "speed": speed, "status": status})
    return rows


def table_rows(comparison: Comparison) -> list[dict[str, str]]:
    """One row per paired cell: the figures the table, the CSV and the plot show (n: epochs
    after the first a side). A cell of a group judged over processes shows its epochs' figures
    for information; its group's row carries the speed verdict."""
    accuracy = {a.group: a for a in comparison.accuracy}
    rows = []
    for pair in comparison.pairs:
        check = accuracy[_group_of(pair.key)]
        outcome = pair.base.outcome
        if pair.cand.outcome != outcome:
            outcome = f"{outcome}->{pair.cand.outcome}"
        rows.append(
            {
                "cell": cell_name(pair.key),
                "outcome": outcome,
                "test_acc_base": _optional(pair.base.test_accuracy),
                "test_acc_cand": _optional(pair.cand.test_accuracy),
                "accuracy_check": "not judged"
                if pair.not_judged
                else f"{check.method}: {check.verdict}",
                **_speed_columns(pair.speed),
                "speed": speed_word(comparison, pair),
                "status": cell_status(comparison, pair),
            }
        )
    return rows


def csv_text(comparison: Comparison) -> str:
    """The cell rows (level `epochs`) and the group rows (level `processes`, the group's name
    in the cell column) as one CSV."""
    import csv
    import io

    accuracy = {a.group: a for a in comparison.accuracy}
    rows = [{**row, "level": "epochs"} for row in table_rows(comparison)]
    for group in group_rows(comparison):
        name = group.pop("group")
        check = accuracy[name]
        rows.append(
            {
                "cell": name,
                "outcome": "-",
                "test_acc_base": _optional(check.base_mean),
                "test_acc_cand": _optional(check.cand_mean),
                "accuracy_check": f"{check.method}: {check.verdict}",
                **group,
                "level": "processes",
            }
        )
    out = io.StringIO()
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return out.getvalue()


def _changes_lines(title: str, found: dict[str, tuple[str, str]]) -> list[str]:
    if not found:
        return [f"{title}: none"]
    return [f"{title}:"] + [f"  {k}: {old} -> {new}" for k, (old, new) in found.items()]


def _aligned(header: tuple[str, ...], body: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, tuple("-" * w for w in widths), *body]
    ]


def _side_line(side: Side) -> str:
    """A side's id and name, and its status where it did not finish (KILLED, FAILED)."""
    ended = f", ended {side.status}" if side.status != "FINISHED" else ""
    return f"{side.run_id} ({side.name}{ended})"


def _unpaired_lines(c: Comparison) -> list[str]:
    """The cells of one side only; where the other side was cut short, that is why."""
    lines = []
    for role, keys, other, other_role in (
        ("baseline", c.unpaired_base, c.candidate, "candidate"),
        ("candidate", c.unpaired_cand, c.baseline, "baseline"),
    ):
        cut = other.status != "FINISHED"
        why = f" (the {other_role} ended {other.status} before running it)" if cut else ""
        lines += [f"unpaired: {cell_name(key)} only in the {role}{why}" for key in keys]
    return lines


def samples_needed(alpha: float) -> int:
    """The fewest samples a side with which an exact one-sided Mann-Whitney test can reach
    p < alpha (5 at 0.01: 1/252)."""
    return next(n for n in range(1, 1000) if min_exact_p(n, n) <= alpha)


def _too_few_lines(c: Comparison) -> list[str]:
    """The cells whose speed had too few samples: one paragraph for all of them, not a line
    each (a 1-epoch matrix has 12)."""
    if len(c.too_few) < 2:
        return [line for text in c.too_few for line in _wrapped(f"INCONCLUSIVE {text}")]
    few = [
        p
        for p in c.pairs
        if not p.by_processes
        and not p.not_judged
        and (p.speed is None or p.speed.verdict == "too few samples")
    ]
    counts = {(0, 0) if p.speed is None else (p.speed.n_base, p.speed.n_cand) for p in few}
    if len(counts) == 1:
        [(n_base, n_cand)] = counts
        each = f" ({n_base} vs {n_cand} each)"
        names = ", ".join(cell_name(p.key) for p in few)
    else:
        each = ""
        names = ", ".join(
            f"{cell_name(p.key)} ({0 if p.speed is None else p.speed.n_base} vs"
            f" {0 if p.speed is None else p.speed.n_cand})"
            for p in few
        )
    need = samples_needed(c.settings.alpha)
    text = (
        f"INCONCLUSIVE speed of {len(few)} cells: too few epochs after the first{each} for"
        f" p < {c.settings.alpha:g}, which needs {need} a side (--epochs {need + 1}), or"
        f" {need}+ seeds a side: {names}"
    )
    return _wrapped(text)


def _deciding_lines(c: Comparison) -> list[str]:
    """What makes the verdict: each regression, each reason it is inconclusive, and the
    flags judged anyway; one paragraph each."""
    lines = [line for text in c.regressions for line in _wrapped(f"REGRESSION {text}")]
    too_few = set(c.too_few)
    for text in c.inconclusive:
        if text not in too_few:
            lines += _wrapped(f"INCONCLUSIVE {text}")
    lines += _too_few_lines(c)
    if c.settings.allow_busy:
        for text in c.speed_flags:
            lines += _wrapped(f"WARNING (judged anyway, --allow-busy) {text}")
    return lines


def _cell_lines(c: Comparison) -> list[str]:
    """The cells that are not "no change", regressions first, as two tables (the judgements,
    then the speed figures: one would be too wide); the rest counted."""
    rows = table_rows(c)
    shown = sorted(
        (r for r in rows if r["status"] != "no change"),
        key=lambda r: STATUSES.index(r["status"]),
    )
    rest = len(rows) - len(shown)
    if not shown:
        return [f"{rest} cell(s), all no change (each cell's figures: compare.csv)"]
    judged = [
        (
            r["cell"],
            r["outcome"],
            f"{r['test_acc_base']} -> {r['test_acc_cand']}",
            r["accuracy_check"].split(": ")[-1],
            r["speed"],
        )
        for r in shown
    ]
    lines = _aligned(("cell", "outcome", "test acc b -> c", "accuracy", "speed"), judged)
    figures = [(r["cell"], *_figures(r)) for r in shown if r["ratio"] != "-"]
    if figures:
        lines += ["", *_aligned(("cell", *FIGURES_HEADER), figures)]
    if rest:
        lines.append(f"{rest} more cell(s): no change (each cell's figures: compare.csv)")
    return lines


FIGURES_HEADER = ("samples/s b -> c", "ratio [95% CI]", "p", "n b/c", "detectable")


def _figures(row: dict[str, str]) -> tuple[str, ...]:
    return (
        f"{row['samples_per_s_base']} -> {row['samples_per_s_cand']}",
        f"{row['ratio']} [{row['ci95_low']}, {row['ci95_high']}]",
        row["p_value"],
        row["n"],
        row["detectable_slowdown"],
    )


def _legend(c: Comparison) -> list[str]:
    """Each column once, and the rules that judge speed."""
    s = c.settings
    need = samples_needed(s.alpha)
    explained = [
        "outcome: how training ended (baseline->candidate where it changed).",
        "test acc b -> c: test accuracy, baseline -> candidate.",
        "accuracy: the check of the cell's stage/backend/device (the lines above the table).",
        "speed: the cell's speed test: ok (no slowdown it can call significant), regression,"
        " within run noise, too few samples, by group (judged over processes, below), or not"
        " judged (busy: a run or cell is flagged speed_stable false or a peak moved, and"
        " --allow-busy judges it anyway; hardware: it differs).",
        "samples/s b -> c: median samples/s of the epochs after the first (the first compiles).",
        "ratio [95% CI]: candidate / baseline median samples/s (above 1: faster) and its"
        " bootstrap 95% interval.",
        "p: one-sided Mann-Whitney U p-value that the candidate is slower; small says slower."
        " It reads 1 (or near) when the candidate was as fast or faster; with n samples a side"
        f" it cannot fall below 1/C(2n, n) (0.5 at one, 1/252 at five), so fewer than {need}"
        f" a side can never reach p < {s.alpha:g}.",
        "n b/c: samples a side: epochs after the first (a cell), processes (a group).",
        f"detectable: the smallest slowdown the samples' noise lets the test find with"
        f" {POWER:.0%} power (-: too few samples).",
        f"A cell regresses with p < {s.alpha:g} and a slowdown beyond {s.max_slowdown:.0%} and"
        f" beyond the run noise {s.run_noise:.0%} (--run-noise: how far one process's speed"
        " moves with nothing changed, which one process a side cannot show); a group over"
        f" processes with p < {s.alpha:g} and a slowdown beyond {s.max_slowdown:.0%}.",
    ]
    return ["columns:", *(line for text in explained for line in _wrapped(f"- {text}"))]


def _accuracy_lines(c: Comparison) -> list[str]:
    """Each group's accuracy check; the groups that passed alike on one line."""
    lines = []
    passed: dict[str, list[str]] = {}
    for accuracy in c.accuracy:
        if accuracy.verdict == "ok":
            passed.setdefault(accuracy.detail, []).append(accuracy.group)
        else:
            lines += _wrapped(f"accuracy {accuracy.group}: {accuracy.verdict} ({accuracy.detail})")
    for detail, groups in passed.items():
        lines += _wrapped(f"accuracy ok ({detail}): {', '.join(groups)}")
    return lines


def report_text(comparison: Comparison) -> str:
    """What compare prints and records: the verdict and what makes it, what changed, the cells
    that are not "no change", the groups over processes, and what each column means."""
    c = comparison
    statuses = [r["status"] for r in table_rows(c)]
    counted = ", ".join(f"{statuses.count(s)} {s}" for s in STATUSES if s in statuses)
    lines = [
        f"verdict: {c.verdict} (exit {c.exit_code})",
        f"paired cells: {counted}",
        *_deciding_lines(c),
        "",
        *_wrapped(f"baseline  {_side_line(c.baseline)}"),
        *_wrapped(f"candidate {_side_line(c.candidate)}"),
        *_wrapped(DIRECTION),
        *_changes_lines("what was trained differs", c.trained_changes),
        *_changes_lines("software that differs", c.software_changes),
        *_changes_lines("speed options that differ", c.option_changes),
        *_changes_lines("hardware that differs", c.hardware_changes),
        *_unpaired_lines(c),
        *_accuracy_lines(c),
        "",
        *_cell_lines(c),
    ]
    if c.groups:
        lines += ["", "speed over processes (each cell's median samples/s one sample):"]
        body = [(r["group"], *_figures(r), r["speed"]) for r in group_rows(c)]
        lines += _aligned(("group", *FIGURES_HEADER, "speed"), body)
    lines += ["", *_legend(c)]
    return "\n".join(lines)
