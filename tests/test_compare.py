"""`bench compare`: the statistics with exact numbers, then the command on real runs."""

from __future__ import annotations

import argparse
import itertools
import math
import re
import shutil
import sqlite3
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from backends import installed_backends
from bench.commands.cli import build_parser
from bench.commands.compare import judge, load_side, settings_of
from bench.commands.compare import run as cmd_compare
from bench.core.errors import BenchError
from bench.recording import store, verdict_text
from bench.recording import verdict as compare
from bench.recording.tracking import Tracker
from bench.recording.user_tags import parse_tag
from bench.recording.verdict import (
    Fingerprint,
    JudgedCell,
    Settings,
    Side,
    first_difference,
    min_exact_p,
    minimum_detectable_slowdown,
    speed_test,
    steady_rates,
)
from tests.conftest import ROOT
from tests.live import (
    PATIENCE_S,
    bench_command,
    run_command,
    store_runs,
)
from tests.test_ui import SCREENSHOTS, _browser, _free_port, _wait_for_port

# --- the statistics -------------------------------------------------------------------------


def test_steady_rates_leave_out_the_first_epoch() -> None:
    # 55,000 training rows in batches of 100: 550 steps of 100 samples an epoch.
    assert steady_rates([10.0, 5.0, 4.0], 100, 55_000) == [11_000.0, 13_750.0]


def test_first_difference_names_the_first_step_that_differs() -> None:
    base = np.array([1.0, 2.0, 3.0, 4.0])
    assert first_difference(base, base.copy()) is None
    assert first_difference(base, np.array([1.0, 2.0, 3.0 + 2**-50, 4.0])) == 3
    assert first_difference(base, base[:3]) == 4  # one run stopped early (diverged)
    nan = np.array([1.0, np.nan])
    assert first_difference(nan, nan.copy()) is None  # the same divergence is the same


def test_min_exact_p_is_one_over_the_arrangements() -> None:
    assert min_exact_p(4, 4) == 1 / 70  # above 0.01: 4 epochs a side can never be significant
    assert min_exact_p(5, 5) == 1 / 252
    assert min_exact_p(0, 5) == 1.0


def test_minimum_detectable_slowdown_by_the_formula() -> None:
    # log rates 0, +-0.01, +-0.02 on both sides: sample variance 2.5e-4, df 8.
    logs = [0.0, 0.01, -0.01, 0.02, -0.02]
    rates = [1000 * math.exp(x) for x in logs]
    found = minimum_detectable_slowdown(rates, rates, alpha=0.01)
    assert found == pytest.approx(0.0379958235990242, rel=1e-9)
    assert minimum_detectable_slowdown(rates[:4], rates[:4], alpha=0.01) is None
    wider = [1000 * math.exp(2 * x) for x in logs]
    more = rates * 2
    assert minimum_detectable_slowdown(wider, wider, alpha=0.01) > found  # type: ignore[operator]
    assert minimum_detectable_slowdown(more, more, alpha=0.01) < found  # type: ignore[operator]


def test_speed_test_finds_a_clear_slowdown() -> None:
    base = [100.0, 101.0, 102.0, 103.0, 104.0]
    cand = [80.0, 81.0, 82.0, 83.0, 84.0]
    result = speed_test(base, cand, Settings())
    assert result is not None
    assert result.p_value == pytest.approx(1 / 252)  # every candidate epoch below every base one
    assert result.ratio == pytest.approx(82 / 102)
    assert 80 / 104 <= result.ci_low <= result.ratio <= result.ci_high <= 84 / 100
    assert result.verdict == "regression"
    # Significant but within the allowed slowdown: no regression.
    assert speed_test(base, cand, Settings(max_slowdown=0.25)).verdict == "ok"  # type: ignore[union-attr]
    # The same data, the same CI: the bootstrap is seeded.
    again = speed_test(base, cand, Settings())
    assert again is not None and (again.ci_low, again.ci_high) == (result.ci_low, result.ci_high)


def test_speed_test_says_too_few_samples() -> None:
    result = speed_test([100.0, 101, 102, 103], [50.0, 51, 52, 53], Settings())
    assert result is not None and result.verdict == "too few samples"
    assert result.detectable is None
    assert speed_test([], [1.0], Settings()) is None


def test_speed_test_false_alarms_stay_below_alpha_on_pure_noise() -> None:
    """Both sides drawn from one distribution: the gate fires at most about alpha of the time
    (the slowdown threshold makes it rarer still)."""
    rng = np.random.default_rng(1)
    alarms = 0
    for _ in range(400):
        base = list(1000 * np.exp(rng.normal(0, 0.05, 8)))
        cand = list(1000 * np.exp(rng.normal(0, 0.05, 8)))
        result = speed_test(base, cand, Settings(max_slowdown=0.0))
        assert result is not None
        alarms += result.verdict == "regression"
    assert alarms / 400 <= 0.02


def _cell(
    seed: int = 0,
    rates: list[float] | None = None,
    losses: list[float] | None = None,
    accuracy: float = 0.97,
    outcome: str = "converged",
    cpu: str = "AMD EPYC",
    numpy_version: str = "2.4",
    stable: bool = True,
) -> JudgedCell:
    return JudgedCell(
        key=("relu-xavier", "torch", "cpu", seed),
        run_id=f"run{seed}",
        outcome=outcome,
        test_accuracy=accuracy,
        rates=rates if rates is not None else [100.0, 101, 102, 103, 104],
        step_losses=np.array(losses if losses is not None else [2.3, 1.0, 0.5]),
        fingerprint=Fingerprint({"cpu_model": cpu}, {"numpy_version": numpy_version}),
        spec={"training.epochs": "6"},
        deterministic=True,
        speed_stable=stable,
    )


def _side(run_id: str, *cells: JudgedCell, stable: bool = True, drift: float = 0.0) -> Side:
    return Side(
        run_id=run_id,
        name=run_id,
        experiment_id="1",
        options={"option.threads": "2"},
        cells={c.key: c for c in cells},
        speed_stable=stable,
        peak_drift={"torch_cpu": drift},
    )


def test_identical_sides_pass() -> None:
    result = compare.compare(_side("a", _cell()), _side("b", _cell()), Settings())
    assert result.exit_code == compare.EXIT_OK
    assert result.accuracy[0].method == "bit-identical"
    assert "verdict: no regression (exit 0)" in verdict_text.report_text(result)


def test_a_changed_step_loss_is_a_regression_naming_the_step() -> None:
    result = compare.compare(
        _side("a", _cell()), _side("b", _cell(losses=[2.3, 1.0, 0.6])), Settings()
    )
    assert result.exit_code == compare.EXIT_REGRESSION
    assert "step losses differ from step 3" in result.regressions[0]


def test_a_changed_outcome_is_a_regression() -> None:
    cand = _cell(outcome="diverged", cpu="other")  # an outcome is judged on any hardware
    result = compare.compare(_side("a", _cell()), _side("b", cand), Settings())
    assert result.exit_code == compare.EXIT_REGRESSION
    assert "converged -> diverged" in result.regressions[0]


def test_other_software_is_judged_over_the_seeds_accuracies() -> None:
    """1.3 points lower over 3 seeds a side, on other software: worse at alpha 0.05; at 0.01
    neither worse nor equivalent, so inconclusive (no longer "no regression"), saying how
    many seeds would decide it."""
    base = [_cell(s, accuracy=a) for s, a in enumerate([0.97, 0.98, 0.975])]
    cand = [
        _cell(s, accuracy=a, numpy_version="2.5", losses=[2.3, 1.1, 0.6])
        for s, a in enumerate([0.96, 0.965, 0.962])
    ]
    result = compare.compare(_side("a", *base), _side("b", *cand), Settings(alpha=0.05))
    assert result.accuracy[0].method == "worse"
    assert result.accuracy[0].p_value == pytest.approx(0.015204363977072154, rel=1e-9)
    assert result.exit_code == compare.EXIT_REGRESSION
    assert "torch/cpu numpy_version" in result.software_changes
    strict = compare.compare(_side("a", *base), _side("b", *cand), Settings())
    assert strict.exit_code == compare.EXIT_INCONCLUSIVE
    assert strict.accuracy[0].method == "not shown equivalent"
    assert "about 4 seeds a side (--seeds 4) would show it worse" in strict.inconclusive[0]


SLOW = [50.0, 51, 52, 53, 54]  # half the baseline's speed: beyond the default 30% run noise


def test_a_slower_candidate_is_a_regression_and_other_hardware_is_inconclusive() -> None:
    result = compare.compare(_side("a", _cell()), _side("b", _cell(rates=SLOW)), Settings())
    assert result.exit_code == compare.EXIT_REGRESSION
    assert "49.0% slower" in result.regressions[0]
    other = compare.compare(
        _side("a", _cell()), _side("b", _cell(rates=SLOW, cpu="Intel Xeon")), Settings()
    )
    assert other.exit_code == compare.EXIT_INCONCLUSIVE
    assert "hardware differs: torch/cpu cpu_model" in other.inconclusive[0]


def test_one_process_a_side_within_the_run_noise_is_inconclusive() -> None:
    """20% slower on every epoch (p = 1/252) is within what one process's speed moves with
    nothing changed: one run a side cannot call it a regression."""
    slow = [80.0, 81, 82, 83, 84]
    result = compare.compare(_side("a", _cell()), _side("b", _cell(rates=slow)), Settings())
    assert result.exit_code == compare.EXIT_INCONCLUSIVE
    assert result.pairs[0].speed is not None
    assert result.pairs[0].speed.verdict == "within run noise"
    assert "within the 30% that one process's speed can move" in result.inconclusive[0]
    lowered = compare.compare(
        _side("a", _cell()), _side("b", _cell(rates=slow)), Settings(run_noise=0.1)
    )
    assert lowered.exit_code == compare.EXIT_REGRESSION


def _processes(medians: list[float], epochs: int = 3) -> list[JudgedCell]:
    """Cells of seeds 0.. whose epochs sit within 1% of each median."""
    return [
        _cell(seed, rates=[m * (1 + 0.01 * (e % 2)) for e in range(epochs)])
        for seed, m in enumerate(medians)
    ]


def test_five_processes_a_side_are_judged_as_a_group() -> None:
    base = _side("a", *_processes([100.0, 84, 101, 82, 99]))
    slower = _side("b", *_processes([80.0, 66, 79, 65, 81]))
    result = compare.compare(base, slower, Settings())
    [group] = result.groups
    assert (group.group, group.speed.n_base, group.speed.n_cand) == ("relu-xavier/torch/cpu", 5, 5)
    assert group.speed.p_value == pytest.approx(1 / 252)
    assert group.speed.ratio == pytest.approx(79 / 99)
    assert result.exit_code == compare.EXIT_REGRESSION
    assert "over 5 vs 5 processes: 20.2% slower" in result.regressions[0]
    text = verdict_text.report_text(result)
    assert "speed over processes" in text and "by group" in text
    csv_rows = verdict_text.csv_text(result).splitlines()
    assert csv_rows[0].endswith(",level") and csv_rows[-1].endswith(",processes")
    # Processes that settle at two speeds on both sides (the A/A study's 62k and 84k): each
    # cell's epochs agree, so one pair of cells alone looks significant, but the group is not.
    same = _side("b", *_processes([84.0, 100, 83, 99, 101]))
    assert compare.compare(base, same, Settings()).exit_code == compare.EXIT_OK


def test_process_level_false_alarms_stay_below_alpha_on_bimodal_noise() -> None:
    """Each process settles at one of two speeds 25% apart, as on the shared VM: judged over
    five processes a side the gate fires at most about alpha of the time."""
    rng = np.random.default_rng(2)
    alarms = 0
    for _ in range(300):
        draws = [list(rng.choice([63.0, 84.0], 5) * np.exp(rng.normal(0, 0.02, 5))) for _ in "ab"]
        result = compare.compare(
            _side("a", *_processes(draws[0])), _side("b", *_processes(draws[1])), Settings()
        )
        alarms += result.exit_code == compare.EXIT_REGRESSION
    assert alarms / 300 <= 0.02


def test_busy_runs_and_moved_peaks_are_inconclusive_unless_allowed() -> None:
    slow = SLOW
    base, cand = _side("a", _cell()), _side("b", _cell(rates=slow, stable=False))
    assert compare.compare(base, cand, Settings()).exit_code == compare.EXIT_INCONCLUSIVE
    allowed = compare.compare(base, cand, Settings(allow_busy=True))
    assert allowed.exit_code == compare.EXIT_REGRESSION
    assert "WARNING (judged anyway, --allow-busy)" in verdict_text.report_text(allowed)
    moved = compare.compare(base, _side("b", _cell(), drift=-0.12), Settings())
    assert moved.exit_code == compare.EXIT_INCONCLUSIVE
    assert "moved -12%" in moved.inconclusive[0]
    flagged = compare.compare(base, _side("b", _cell(), stable=False), Settings())
    assert flagged.exit_code == compare.EXIT_INCONCLUSIVE


def test_unpaired_cells_are_listed() -> None:
    result = compare.compare(
        _side("a", _cell(0), _cell(1)), _side("b", _cell(0), _cell(2)), Settings()
    )
    text = verdict_text.report_text(result)
    assert "unpaired: relu-xavier/torch/cpu/seed1 only in the baseline" in text
    assert "unpaired: relu-xavier/torch/cpu/seed2 only in the candidate" in text
    assert result.exit_code == compare.EXIT_OK


def test_a_cell_without_an_outcome_is_killed_or_unfinished_not_failed() -> None:
    assert compare.cell_outcome({}, "KILLED") == "killed"
    assert compare.cell_outcome({}, "RUNNING") == "unfinished"
    assert compare.cell_outcome({}, "FAILED") == "unfinished"  # its recording broke
    assert compare.cell_outcome({"error": "boom"}, "FINISHED") == "failed"
    assert compare.cell_outcome({"outcome": "diverged"}, "FINISHED") == "diverged"


def _killed(seed: int) -> JudgedCell:
    """A cell interrupted after a few slow epochs: no accuracy, no step losses."""
    cut = replace(_cell(seed, rates=SLOW), outcome="killed", test_accuracy=None)
    return replace(cut, step_losses=None)


def test_a_killed_candidate_is_inconclusive_not_a_regression() -> None:
    base = _side("a", _cell(0), _cell(1), _cell(2))
    cand = replace(_side("b", _killed(0), _cell(2)), status="KILLED")  # seed 1 never ran
    result = compare.compare(base, cand, Settings())
    assert result.regressions == []
    assert result.exit_code == compare.EXIT_INCONCLUSIVE
    assert result.inconclusive[0] == (
        "candidate run b ended KILLED: relu-xavier/torch/cpu/seed0 killed (not judged);"
        " 1 cell(s) of the other side not run; finish it with `mlp-bench run --resume b` and"
        " compare again"
    )
    assert result.accuracy[0].method == "bit-identical"  # judged over seed 2, which finished
    text = verdict_text.report_text(result)
    assert "candidate b (b, ended KILLED)" in text
    assert "converged->killed" in text and "failed" not in text
    assert "seed1 only in the baseline (the candidate ended KILLED before running it)" in text
    assert replace(cand, kind="perf").finish_hint == "run it again"
    # A side that finished with a cell still open on another machine: unfinished, not judged.
    open_cell = replace(_killed(0), outcome="unfinished")
    result = compare.compare(_side("a", _cell(0)), _side("b", open_cell), Settings())
    assert result.exit_code == compare.EXIT_INCONCLUSIVE and result.regressions == []
    assert result.accuracy[0].verdict == "not judged"
    assert "seed0 unfinished in the candidate" in result.accuracy[0].detail


def test_other_training_is_listed_and_not_judged() -> None:
    """6 epochs against 7, or other data: the cells compute other numbers, so a slower,
    less accurate candidate is not a regression but inconclusive, and says why."""
    longer = replace(_cell(rates=SLOW, accuracy=0.5), spec={"training.epochs": "7"})
    result = compare.compare(_side("a", _cell()), _side("b", longer), Settings())
    assert result.regressions == []
    assert result.exit_code == compare.EXIT_INCONCLUSIVE
    assert result.trained_changes == {"relu-xavier training.epochs": ("6", "7")}
    assert (
        "what was trained differs (relu-xavier training.epochs 6 -> 7)" in (result.inconclusive[0])
    )
    assert "what was trained differs:\n  relu-xavier training.epochs: 6 -> 7" in (
        verdict_text.report_text(result)
    )
    digest = {compare.DATA_DIGEST: "2fc9"}
    other_data = replace(_cell(), inputs={compare.DATA_DIGEST: "77ab"})
    result = compare.compare(
        _side("a", replace(_cell(), inputs=digest)), _side("b", other_data), Settings()
    )
    assert result.trained_changes == {"relu-xavier data_sha256": ("2fc9", "77ab")}
    assert result.exit_code == compare.EXIT_INCONCLUSIVE
    # A cell cut short records no digest: that is no difference.
    result = compare.compare(
        _side("a", replace(_cell(), inputs=digest)), _side("b", _cell()), Settings()
    )
    assert result.trained_changes == {} and result.exit_code == compare.EXIT_OK


def _matrix(rates: list[float], **changed: Any) -> list[JudgedCell]:
    """One cell of each stage and backend of a 12-cell matrix, `changed` in each."""
    return [
        replace(_cell(rates=rates, **changed), key=(stage, backend, "cpu", 0))
        for stage in ("relu-xavier", "relu-normal", "adam", "dropout")
        for backend in ("tensorflow", "torch", "jax")
    ]


def _fits(text: str) -> None:
    """Every line of the text fits the run page's description (verdict_text.WIDTH)."""
    assert max(len(line) for line in text.splitlines()) <= verdict_text.WIDTH


def test_the_text_says_its_verdict_first_then_the_cells_that_decide_it() -> None:
    """One slower cell among twelve: the verdict, the regression, that cell alone in the
    tables, the other eleven counted; the ratio's direction said once, each column explained."""
    base = _matrix([100.0, 101, 102, 103, 104])
    cand = [*base[:4], replace(base[4], rates=SLOW), *base[5:]]
    text = verdict_text.report_text(
        compare.compare(_side("a", *base), _side("b", *cand), Settings())
    )
    lines = text.splitlines()
    assert lines[:4] == [
        "verdict: regression (exit 1)",
        "paired cells: 1 regression, 11 no change",
        "REGRESSION speed relu-normal/torch/cpu/seed0: 49.0% slower (ratio 0.510, 95% CI"
        " 0.490-0.530,",
        "  p = 0.004; beyond the 30% run noise)",
    ]
    rows = [x for x in lines if "/seed0 " in x]
    assert len(rows) == 2 and all(x.startswith("relu-normal/torch/cpu/seed0 ") for x in rows)
    assert rows[0].endswith("  regression")
    assert "11 more cell(s): no change (each cell's figures: compare.csv)" in lines
    assert text.count("above 1 the candidate is faster, below 1 slower") == 1
    for column in ("outcome", "test acc b -> c", "accuracy", "speed", "samples/s b -> c"):
        assert sum(x.startswith(f"- {column}: ") for x in lines) == 1, column
    assert "It reads 1 (or near) when the candidate was as fast or faster" in " ".join(text.split())
    _fits(text)


def test_too_few_samples_in_many_cells_is_one_paragraph() -> None:
    """A 1-epoch matrix: one INCONCLUSIVE paragraph naming the twelve cells and what would
    judge them, not twelve lines before the verdict."""
    base = _matrix([])
    text = verdict_text.report_text(
        compare.compare(_side("a", *base), _side("b", *base), Settings())
    )
    assert text.startswith("verdict: inconclusive (exit 3)\npaired cells: 12 inconclusive\n")
    [reason] = [x for x in text.splitlines() if x.startswith("INCONCLUSIVE")]
    assert reason.startswith("INCONCLUSIVE speed of 12 cells: too few epochs after the first")
    assert "needs 5 a side (--epochs 6), or 5+ seeds a side" in " ".join(text.split())
    assert "dropout/jax/cpu/seed0" in text
    _fits(text)


def test_no_row_says_ok_for_a_speed_that_was_not_judged() -> None:
    """A cell flagged busy makes speed inconclusive for the whole comparison: every row says
    its speed was not judged and why, none says "ok"."""
    base = _matrix([100.0, 101, 102, 103, 104])
    cand = [*base[:11], replace(base[11], speed_stable=False)]
    result = compare.compare(_side("a", *base), _side("b", *cand), Settings())
    assert result.exit_code == compare.EXIT_INCONCLUSIVE
    rows = verdict_text.table_rows(result)
    assert {r["speed"] for r in rows} == {"not judged (busy)"}
    assert {r["status"] for r in rows} == {"inconclusive"}
    other = [replace(c, fingerprint=Fingerprint({"cpu_model": "Intel"}, {})) for c in base]
    hardware = compare.compare(_side("a", *base), _side("b", *other), Settings())
    assert {r["speed"] for r in verdict_text.table_rows(hardware)} == {"not judged (hardware)"}
    allowed = compare.compare(_side("a", *base), _side("b", *cand), Settings(allow_busy=True))
    assert {r["speed"] for r in verdict_text.table_rows(allowed)} == {"ok"}


def test_parse_tag() -> None:
    assert parse_tag("release=v1.2") == ("release", "v1.2")
    for bad in ("novalue", "kind=matrix", "mlflow.user=x", "9x=y", "k=a b", "k='x"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_tag(bad)


# --- the command, on real runs ---------------------------------------------------------------
# Six epochs: five throughput samples a side after the first, the fewest with which a one-sided
# exact Mann-Whitney test can reach p < 0.01 (1/252; four a side give at best 1/70).
EPOCHS = "6"


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        bench_command(*args), cwd=ROOT, capture_output=True, text=True, timeout=PATIENCE_S
    )


def _newest_parent(uri: str) -> str:
    """The id of the newest invocation in the store (read there, not from the closing line)."""
    runs = [r for r in store_runs(uri) if r.data.tags.get("kind") == "matrix"]
    return str(max(runs, key=lambda r: r.info.start_time).info.run_id)


# A cell on a machine shared with other jobs (and with the spinners below) may take many times
# its quiet length: the cell timeout and the wait are wide, so that only a hang fails.
RUN_PATIENCE_S = 3600


def _run(uri: str, *args: str) -> str:
    done = subprocess.run(
        run_command(uri, "--cell-timeout", str(RUN_PATIENCE_S), *args),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_PATIENCE_S,
    )
    assert done.returncode == 0, done.stderr
    return _newest_parent(uri)


@dataclass(frozen=True)
class Runs:
    """Two real invocations of one seed-0 cell: the only training of these tests. What the
    other cases need (a slower candidate, another experiment, another seed, a killed run) is
    this store copied and one record in it changed, as each test below does."""

    uri: str
    folder: Path
    base: str  # seed 0, --threads 2, tagged role=base
    same: str  # the same again


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    folder = tmp_path_factory.mktemp("compare")
    uri = f"sqlite:///{folder}/mlflow.db"
    base = _run(uri, "--epochs", EPOCHS, "--threads", "2", "--tag", "role=base")
    same = _run(uri, "--epochs", EPOCHS, "--threads", "2")
    return Runs(uri, folder, base, same)


def _comparisons(uri: str) -> list[Any]:
    return [r for r in store_runs(uri) if r.data.tags.get("kind") == "comparison"]


@dataclass(frozen=True)
class Compared:
    """`bench compare tag:role=base SAME` as a user types it, once for the tests that read it."""

    done: subprocess.CompletedProcess[str]
    run_id: str  # the comparison run it recorded


@pytest.fixture(scope="module")
def compared(runs: Runs) -> Compared:
    # The tag finds the baseline. The slowdown allowed is wide because the two runs' speeds
    # depend on what else the shared machine ran meanwhile; the A/A study (tests/aa_study.py)
    # measures the default gate's false alarms.
    done = _bench(
        "compare",
        "tag:role=base",
        runs.same,
        "--tracking-uri",
        runs.uri,
        "--allow-busy",
        "--max-slowdown",
        "0.5",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    [recorded] = _comparisons(runs.uri)
    return Compared(done, recorded.info.run_id)


@pytest.mark.slow
def test_two_seed0_runs_of_one_commit_pass_and_are_recorded(runs: Runs, compared: Compared) -> None:
    done = compared.done
    lines = done.stdout.splitlines()
    assert lines[0] == "verdict: no regression (exit 0)"  # first, before any table
    assert "step losses bit-identical (1 seed(s))" in done.stdout
    assert max(len(line) for line in lines[: lines.index("columns:")]) <= verdict_text.WIDTH
    [recorded] = _comparisons(runs.uri)
    assert recorded.data.tags["baseline"] == runs.base
    assert recorded.data.tags["candidate"] == runs.same
    assert recorded.data.tags["verdict"] == "no regression"
    client = MlflowClient(tracking_uri=runs.uri)
    names = {a.path for a in client.list_artifacts(recorded.info.run_id)}
    assert names == {"compare.txt", "compare.csv", "compare.png", "report.html"}
    page = runs.folder / "reports" / recorded.info.run_id / "report.html"
    assert "verdict <strong>no regression</strong> (exit 0)" in page.read_text()
    again = _bench("report", recorded.info.run_id, "--tracking-uri", runs.uri)
    assert again.returncode == 0, again.stdout + again.stderr
    csv_file = client.download_artifacts(recorded.info.run_id, "compare.csv", str(runs.folder))
    header, row = Path(csv_file).read_text().splitlines()
    assert header.split(",")[:2] == ["cell", "outcome"]
    assert row.startswith(f"relu-xavier/{installed_backends()[-1]}/cpu/seed0,converged,")


@pytest.mark.slow
def test_compare_ends_with_the_pages_of_the_comparison_and_both_sides(
    runs: Runs, compared: Compared
) -> None:
    """As every command does: the run recorded, how to serve the UI, and where to look."""
    tail = compared.done.stdout.splitlines()[-5:]
    experiment = MlflowClient(tracking_uri=runs.uri).get_run(runs.base).info.experiment_id
    pages = f"http://127.0.0.1:5000/#/experiments/{experiment}/runs"
    assert tail[0] == f"recorded as comparison run {compared.run_id}"
    assert tail[1].startswith("browse with: ") and f"--backend-store-uri {runs.uri}" in tail[1]
    assert tail[2:] == [
        f"  this comparison: {pages}/{compared.run_id}",
        f"  its baseline: {pages}/{runs.base}",
        f"  its candidate: {pages}/{runs.same}",
    ]


# The narrower of the widths a laptop's browser is commonly given.
WINDOW_WIDTH = 1280


def _right_edge(page: Any, selector: str) -> float:
    """How far right the widest element matching `selector` reaches, in CSS pixels."""
    edges = "[...document.querySelectorAll(s)].map(e => e.getBoundingClientRect().right)"
    return float(page.evaluate(f"s => Math.max(...{edges})", selector))


@pytest.mark.slow  # a real browser on the comparison's page, served by `mlflow ui`
def test_the_comparison_page_fits_the_window_with_its_verdict_in_view(compared: Compared) -> None:
    """The description's text and the tags panel (with the verdict tag) within the window,
    once MLflow's assistant panel, open in a fresh profile, is closed."""
    executable = _browser()
    from playwright.sync_api import sync_playwright

    lines = compared.done.stdout.splitlines()
    command = next(x for x in lines if x.startswith("browse with: ")).split()[2:]
    port = _free_port()
    command[command.index("--port") + 1] = str(port)
    url = next(x for x in lines if x.startswith("  this comparison: ")).split(": ", 1)[1]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    try:
        _wait_for_port(server, port)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": WINDOW_WIDTH, "height": 900})
                page.goto(url.replace(":5000/", f":{port}/"))
                verdict = page.get_by_text("verdict: no regression (exit 0)").first
                verdict.wait_for(timeout=PATIENCE_S * 1000)
                page.get_by_text("MLflow Assistant").wait_for(timeout=PATIENCE_S * 1000)
                page.get_by_role("button", name=re.compile("close", re.I)).last.click()
                tag = page.locator("span").filter(has_text=re.compile("^verdict$")).first
                tag.wait_for(timeout=PATIENCE_S * 1000)
                page.screenshot(path=str(SCREENSHOTS / "comparison.png"))
                width = page.evaluate("document.documentElement.scrollWidth")
                assert width <= WINDOW_WIDTH, f"the page is {width} px wide"
                assert _right_edge(page, "pre") <= WINDOW_WIDTH
                box = tag.bounding_box()
                assert box is not None and box["x"] + box["width"] <= WINDOW_WIDTH, box
            finally:
                browser.close()
    finally:
        server.terminate()
        server.wait(timeout=60)


def _paragraph(text: str, start: str) -> str:
    """The wrapped paragraph that starts with `start`, as one line."""
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith(start))
    rest = itertools.takewhile(lambda line: line.startswith("  "), lines[first + 1 :])
    return " ".join([lines[first], *(line.strip() for line in rest)])


def _slower(runs: Runs) -> str:
    """The store with `same` made slower than the baseline on every epoch (each epoch twice
    the baseline's slowest: every sample below every other, p = 1/252, at least 50% slower),
    flagged speed_stable false, and with another speed-only option (--inter-op-threads 2).
    Recorded, not measured: a real slowdown on the shared machine was not reliably slow."""
    client = MlflowClient(tracking_uri=runs.uri)
    seconds = client.get_metric_history(_cell_of(runs.uri, runs.base), "epoch_seconds")
    slow = str(2 * max(m.value for m in seconds))
    cell = _cell_of(runs.uri, runs.same)
    options = "UPDATE params SET value = '2' WHERE key = 'option.inter_op_threads' AND run_uuid = ?"
    flag = "INSERT OR REPLACE INTO tags (key, value, run_uuid) VALUES (?, ?, ?)"
    return _altered_store(
        runs,
        "slow.db",
        ("UPDATE metrics SET value = ? WHERE key = 'epoch_seconds' AND run_uuid = ?", (slow, cell)),
        (options, (runs.same,)),
        (options, (cell,)),
        (flag, ("speed_stable", "false", cell)),
        (flag, ("speed_unstable_reason", "other processes used the cores", cell)),
    )


@pytest.mark.slow
def test_a_slower_candidate_is_a_regression_with_its_ratio_and_ci(runs: Runs) -> None:
    uri = _slower(runs)
    done = _bench("compare", runs.base, runs.same, "--tracking-uri", uri, "--allow-busy")
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.startswith("verdict: regression (exit 1)\n")
    assert "option.inter_op_threads: 1 -> 2" in done.stdout  # listed, not refused
    line = _paragraph(done.stdout, "REGRESSION speed")
    assert "slower (ratio 0." in line and "95% CI 0." in line
    # Without --allow-busy the flag on the candidate makes it inconclusive, and its row says
    # that its speed was not judged, not "regression" nor "ok".
    flagged = _bench("compare", runs.base, runs.same, "--tracking-uri", uri)
    assert flagged.returncode == 3, flagged.stdout + flagged.stderr
    assert flagged.stdout.startswith("verdict: inconclusive (exit 3)\n")
    assert "speed not stable (other processes used the cores)" in flagged.stdout
    rows = [x for x in flagged.stdout.splitlines() if x.startswith("relu-xavier/")]
    assert rows[0].endswith("not judged (busy)"), rows  # the first table: what was judged


def _copy_store(runs: Runs, name: str, sql: str, *values: str) -> str:
    """The real store copied beside itself (artifacts resolve alike), one record changed."""
    return _altered_store(runs, name, (sql, values))


def _altered_store(runs: Runs, name: str, *changes: tuple[str, tuple[str, ...]]) -> str:
    """The real store copied beside itself, each change (SQL and its values) made in it."""
    copy = runs.folder / name
    shutil.copy(runs.folder / "mlflow.db", copy)
    with sqlite3.connect(copy) as connection:
        for sql, values in changes:
            assert connection.execute(sql, values).rowcount >= 1, sql
    return f"sqlite:///{copy}"


def _cell_of(uri: str, parent: str) -> str:
    [cell] = [
        r
        for r in store_runs(uri)
        if r.data.tags.get("invocation") == parent and r.data.tags.get("kind") == "cell"
    ]
    return str(cell.info.run_id)


@pytest.mark.slow
def test_other_recorded_hardware_is_inconclusive(runs: Runs) -> None:
    uri = _copy_store(
        runs,
        "other-cpu.db",
        "UPDATE params SET value = ? WHERE key = 'env.cpu_model' AND run_uuid = ?",
        "Some Other CPU",
        _cell_of(runs.uri, runs.same),
    )
    done = _bench("compare", runs.base, runs.same, "--tracking-uri", uri, "--allow-busy")
    assert done.returncode == 3, done.stdout + done.stderr
    assert "INCONCLUSIVE hardware differs:" in done.stdout
    assert "cpu_model: " in done.stdout and "-> Some Other CPU" in done.stdout


def _left_running(parent: str) -> list[tuple[str, tuple[str, ...]]]:
    """An invocation's parent RUNNING, owned by this live process (as one still training is,
    so the next command on the store does not end it KILLED)."""
    owner = [
        ("UPDATE tags SET value = ? WHERE key = ? AND run_uuid = ?", (value, key, parent))
        for key, value in store.owner_tags().items()
    ]
    return [("UPDATE runs SET status = 'RUNNING' WHERE run_uuid = ?", (parent,)), *owner]


def _interrupted(parent: str, cell: str) -> list[tuple[str, tuple[str, ...]]]:
    """An invocation interrupted while its cell trained: both KILLED, and the cell without
    what it records once it finishes (its outcome, environment and test accuracy)."""
    return [
        ("UPDATE runs SET status = 'KILLED' WHERE run_uuid IN (?, ?)", (parent, cell)),
        ("DELETE FROM tags WHERE key = 'outcome' AND run_uuid = ?", (cell,)),
        ("DELETE FROM params WHERE key LIKE 'env.%' AND run_uuid = ?", (cell,)),
        ("DELETE FROM metrics WHERE key = 'test_accuracy' AND run_uuid = ?", (cell,)),
        ("DELETE FROM latest_metrics WHERE key = 'test_accuracy' AND run_uuid = ?", (cell,)),
    ]


@pytest.mark.slow
def test_a_side_still_running_is_refused_and_nothing_recorded(runs: Runs) -> None:
    # The candidate by its tag, and the newest invocation (the default candidate): one run.
    uri = _altered_store(runs, "running.db", *_left_running(runs.same))
    client = MlflowClient(tracking_uri=uri)
    client.set_tag(runs.same, "role", "cand")
    before = len(_comparisons(uri))
    done = _bench("compare", runs.base, "tag:role=cand", "--tracking-uri", uri)
    _one_line_exit_2(done, f"candidate tag:role=cand, run {runs.same}, is still running (pid")
    assert "wait for it to finish, or give another CANDIDATE" in done.stderr
    # The same command line in this process: the one-line error is the message.
    message = _refused(runs.base, "--tracking-uri", uri)
    assert message.startswith(f"the newest invocation in {uri}, run {runs.same}, is")
    assert len(_comparisons(uri)) == before


def _read(uri: str, runs: Runs, settings: Settings) -> compare.Comparison:
    """The baseline and `same` of a store, read as the command reads them, and judged."""
    reader = Tracker(uri, None).reader
    base, cand = (load_side(reader, reader.run(r, "missing")) for r in (runs.base, runs.same))
    return compare.compare(base, cand, settings)


@pytest.mark.slow
def test_a_killed_candidate_is_inconclusive_and_says_killed(runs: Runs) -> None:
    cell = _cell_of(runs.uri, runs.same)
    uri = _altered_store(runs, "killed.db", *_interrupted(runs.same, cell))
    result = _read(uri, runs, Settings(allow_busy=True))
    assert result.exit_code == compare.EXIT_INCONCLUSIVE and result.regressions == []
    text = verdict_text.report_text(result)
    assert f"INCONCLUSIVE candidate run {runs.same} ended KILLED: relu-xavier/" in text
    assert f"`mlp-bench run --resume {runs.same}`" in text
    assert "converged->killed" in text and "failed" not in text
    assert "hardware that differs: none" in text  # the killed cell recorded no environment


@pytest.mark.slow
def test_other_recorded_epochs_are_listed_and_not_judged(runs: Runs) -> None:
    """The store as the command reads it: the cells' stage params and data digest."""
    cell = _cell_of(runs.uri, runs.same)
    change = "UPDATE params SET value = ? WHERE key = ? AND run_uuid = ?"
    uri = _altered_store(
        runs,
        "epochs.db",
        (change, ("7", "training.epochs", cell)),
        (change, ("0123abcd", "env.data_sha256", cell)),
    )
    result = _read(uri, runs, Settings(allow_busy=True))
    [digest] = {p.base.inputs[compare.DATA_DIGEST] for p in result.pairs}
    assert result.trained_changes == {
        "relu-xavier training.epochs": (EPOCHS, "7"),
        "relu-xavier data_sha256": (digest, "0123abcd"),
    }
    assert result.exit_code == compare.EXIT_INCONCLUSIVE and result.regressions == []


@pytest.mark.slow
def test_an_upgrade_with_the_same_bits_is_bit_identical_and_recorded(runs: Runs) -> None:
    """The candidate's cell recorded on another framework version, its step losses the same
    bits: bit-identical across the two versions, the change listed as expected, and the
    settings recorded with the comparison (before: other software skipped the bitwise check)."""
    cell = _cell_of(runs.uri, runs.same)
    uri = _copy_store(
        runs,
        "upgraded.db",
        "UPDATE params SET value = '99.0.0' WHERE key = 'env.framework_version' AND run_uuid = ?",
        cell,
    )
    args = build_parser().parse_args(
        ["compare", "x", "--equivalence-margin", "0.2", "--allow-busy"]
    )
    settings = replace(settings_of(args, frozenset({"framework_version"})), max_slowdown=0.5)
    tracker = Tracker(uri, None)
    comparison, text, run_id = judge(tracker, runs.base, runs.same, settings, echo=False)
    [accuracy] = comparison.accuracy
    backend = installed_backends()[-1]
    assert accuracy.method == "bit-identical"
    assert accuracy.detail.startswith("step losses bit-identical (1 seed(s)) across ")
    assert accuracy.detail.endswith(" -> 99.0.0") and backend in accuracy.detail
    assert f"{backend}/cpu framework_version: " in text and "-> 99.0.0 (expected)" in text
    recorded = MlflowClient(tracking_uri=uri).get_run(run_id)
    assert recorded.data.params["equivalence_margin"] == "0.2"
    assert recorded.data.params["expected_software"] == "framework_version"
    assert recorded.data.tags["verdict"] == comparison.verdict


def test_the_equivalence_margin_is_accuracy_points() -> None:
    args = build_parser().parse_args(["compare", "x"])
    assert settings_of(args).equivalence_margin == compare.DEFAULT_EQUIVALENCE_MARGIN
    for bad in ("0", "100", "x"):
        with pytest.raises(BenchError, match="--equivalence-margin"):
            build_parser().parse_args(["compare", "x", "--equivalence-margin", bad])


def _one_line_exit_2(done: subprocess.CompletedProcess[str], *words: str) -> None:
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    for word in words:
        assert word in lines[0]


def _refused(*argv: str) -> str:
    """`compare ARGV` in this process (a process of its own costs seconds of imports): the
    BenchError it raises, which the command line prints as its one line and exit 2."""
    with pytest.raises(BenchError) as refused:
        cmd_compare(build_parser().parse_args(["compare", *argv]))
    message = str(refused.value)
    assert "\n" not in message, message
    return message


def _other_experiment(runs: Runs) -> str:
    """The store with `same` and its cell moved to an experiment of their own."""
    copy = _altered_store(runs, "experiments.db")
    other = MlflowClient(tracking_uri=copy).create_experiment("other")
    moved = "UPDATE runs SET experiment_id = ? WHERE run_uuid IN (?, ?)"
    cell = _cell_of(runs.uri, runs.same)
    with sqlite3.connect(copy.removeprefix("sqlite:///")) as connection:
        assert connection.execute(moved, (other, runs.same, cell)).rowcount == 2
    return copy


@pytest.mark.slow
def test_bad_inputs_are_one_line_exit_2_and_record_nothing(runs: Runs) -> None:
    before = len(_comparisons(runs.uri))
    uri = ("--tracking-uri", runs.uri)
    _one_line_exit_2(_bench("compare", "0123abc", runs.same, *uri), "no run '0123abc'")
    cell = _cell_of(runs.uri, runs.same)
    not_a_parent = _refused(runs.base, cell, *uri)
    assert "cell run" in not_a_parent and runs.same in not_a_parent
    assert "role=nothing" in _refused("tag:role=nothing", runs.same, *uri)
    other = ("--tracking-uri", _other_experiment(runs))
    assert "different experiments" in _refused(runs.base, runs.same, *other)
    other_seed = _copy_store(
        runs,
        "seed1.db",
        "UPDATE tags SET value = '1' WHERE key = 'seed' AND run_uuid = ?",
        cell,
    )
    no_common = _refused(runs.base, runs.same, "--tracking-uri", other_seed)
    assert "no cell in common" in no_common
    assert "the same run" in _refused(runs.base, runs.base, *uri)
    assert "--alpha" in _refused(runs.base, "--alpha", "2", *uri)
    assert len(_comparisons(runs.uri)) == before
    float64 = _copy_store(
        runs,
        "float64.db",
        "UPDATE params SET value = 'float64' WHERE key = 'option.dtype' AND run_uuid = ?",
        runs.same,
    )
    assert "option.dtype float32 vs float64" in _refused(
        runs.base, runs.same, "--tracking-uri", float64
    )


def test_run_refuses_a_reserved_or_malformed_tag(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    _one_line_exit_2(_bench(*run_command(uri, "--tag", "kind=x")[3:]), "harness's own")
    _one_line_exit_2(_bench(*run_command(uri, "--tag", "novalue")[3:]), "KEY=VALUE")
    assert not (tmp_path / "mlflow.db").exists()
