"""bench.execution.load_monitor: other processes' CPU use, the busy check, the canary and each
cell's verdict.

The unit tests build their samples by hand, so their numbers are exact; the one test on the
real machine makes its own load (two spinning processes), so it holds however fast or busy the
machine is otherwise.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from dataclasses import asdict
from pathlib import Path

import pytest
from threadpoolctl import threadpool_limits

from bench.core.cpu_activity import (
    BUSY_CORES,
    Activity,
    CpuSample,
    CpuTimes,
    activity_between,
    cpu_times,
    others_cores,
    steal_fraction,
)
from bench.core.spec import load_stage
from bench.core.types import Cell, CellLoad, CellResult, CellRun
from bench.execution.load_monitor import (
    busy_reason,
    canary,
    canary_failure,
    canary_failure_lines,
    probe_activity,
    unstable_reasons,
    watch_after,
    watch_before,
)
from bench.execution.matrix import _PhaseClock
from bench.recording.tables import results_table
from tests.live import competing_processes

TICK = os.sysconf("SC_CLK_TCK")


def _times(busy_s: float, at: float, idle_s: float = 0.0, steal_s: float = 0.0) -> CpuTimes:
    ticks = {"user": busy_s, "idle": idle_s, "steal": steal_s}
    counts = {k: round(v * TICK) for k, v in ticks.items()}
    return CpuTimes(nice=0, system=0, iowait=0, irq=0, softirq=0, at=at, **counts)


def test_cpu_times_reads_the_machines_line_of_proc_stat(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 5 50 1000 20 3 2 7 0 0\ncpu0 1 1 1 1 1 1 1 1 0 0\n")
    times = cpu_times(stat)
    assert times is not None
    # user, nice, system, idle, iowait, irq, softirq, steal
    ticks = [v for k, v in asdict(times).items() if k != "at"]
    assert ticks == [100, 5, 50, 1000, 20, 3, 2, 7]
    assert times.busy == 100 + 5 + 50 + 3 + 2 and times.total == 1187
    stat.write_text("cpu  100 5 50 1000 20 3 2\n")  # a kernel without the steal column
    old = cpu_times(stat)
    assert old is not None and old.steal == 0
    assert cpu_times(tmp_path / "no-proc-stat") is None  # not Linux: not measured


def test_others_cores_is_the_machines_busy_time_less_ours() -> None:
    before, after = _times(10.0, at=100.0), _times(13.0, at=102.0)
    # 3 s of CPU on the machine in 2 s, 1 s of it ours: one core's worth of other processes.
    assert others_cores(before, after, 1.0) == pytest.approx(1.0)
    assert others_cores(before, after, 3.0) == 0.0
    assert others_cores(before, after, 3.02) == 0.0  # ticks vs exact times: never below 0
    assert others_cores(before, before, 0.0) == 0.0  # no time passed


def test_steal_is_the_share_the_hypervisor_gave_away() -> None:
    before = _times(10.0, at=0.0, idle_s=10.0)
    after = _times(12.0, at=1.0, idle_s=17.0, steal_s=1.0)  # 2 busy + 7 idle + 1 stolen
    assert steal_fraction(before, after) == pytest.approx(0.1)
    assert steal_fraction(before, before) == 0.0


def test_without_proc_stat_activity_is_not_measured() -> None:
    unmeasured = CpuSample(times=None, own_seconds=0.0)
    activity = activity_between(unmeasured, unmeasured)
    assert activity.others_cores is None and activity.steal_fraction is None
    assert busy_reason(activity, 2) is None


def test_busy_is_decided_by_the_probe_and_names_the_load() -> None:
    busy = busy_reason(Activity(0.9, 0.0, 1.8), 2)
    assert busy == "other processes use 0.9 of 2 cores (load 1.8); stop them"
    assert busy_reason(Activity(BUSY_CORES, 0.0, 1.8), 2) is None  # at the limit: quiet
    # The load average lags a minute (a run that just ended still shows): alone it is no proof.
    assert busy_reason(Activity(0.05, 0.0, 6.0), 2) is None
    assert busy_reason(Activity(0.0, 0.15, None), 2) == (
        "the hypervisor gives 15% of the CPU time to other guests (steal); wait for a quieter host"
    )


def test_a_cell_is_unstable_when_the_canary_moved_others_ran_or_its_epochs_spread() -> None:
    quiet = Activity(0.1, 0.0, None)
    assert unstable_reasons(100.0, 120.0, quiet, {"p25": 100.0, "p75": 149.0}) == ()
    assert unstable_reasons(100.0, 70.0, quiet, {}) == ("canary -30%",)
    assert unstable_reasons(100.0, 126.0, quiet, {}) == ("canary +26%",)
    busy = Activity(0.3, 0.2, None)
    assert unstable_reasons(100.0, 100.0, busy, {"p25": 100.0, "p75": 151.0}) == (
        "other processes used 0.30 cores",
        "steal 20%",
        "epochs p75/p25 1.51",
    )


def test_a_canary_no_load_explains_is_a_failed_measurement_not_a_busy_machine() -> None:
    assert canary_failure(600.0, 51_000.0) == "canary unreliable: 85x between before and after"
    assert canary_failure(51_000.0, 600.0) == "canary unreliable: 85x between before and after"
    assert canary_failure(20_000.0, 2_100.0) == ""  # 9.5x: a heavy load can do that
    # Rates no CPU gives: a stopped process, a broken clock.
    assert canary_failure(0.0, 20_000.0) == "canary unreliable: 0 samples/s before"
    assert canary_failure(20_000.0, math.inf) == "canary unreliable: inf samples/s after"
    assert canary_failure(math.nan, 20_000.0) == "canary unreliable: nan samples/s before"
    assert canary_failure(20_000.0, 5e6) == "canary unreliable: 5,000,000 samples/s after"
    # The canary says nothing then: the other signs alone judge the cell's speed.
    quiet = Activity(0.1, 0.0, None)
    assert unstable_reasons(600.0, 51_000.0, quiet, {}) == ()
    busy = Activity(1.3, 0.0, None)
    assert unstable_reasons(600.0, 51_000.0, busy, {}) == ("other processes used 1.30 cores",)


def test_a_failed_canary_is_recorded_and_said_apart_from_the_speed_verdict() -> None:
    failure = "canary unreliable: 85x between before and after"
    load = CellLoad(600.0, 51_000.0, 0.0, 0.0, (), failure)
    assert load.stable
    assert load.tags() == {"speed_stable": "true", "canary_unreliable": failure}
    assert "canary_failure" not in load.metrics()  # the figures are kept, the text is a tag
    assert load.metrics()["canary_after_samples_per_s"] == 51_000.0
    assert CellLoad.from_json(json.loads(json.dumps(asdict(load)))) == load
    kept_before = {k: v for k, v in asdict(load).items() if k != "canary_failure"}
    assert CellLoad.from_json(json.loads(json.dumps(kept_before))).canary_failure == ""
    runs = [_run("relu-xavier", load), _run("adam", CellLoad(1.0, 1.0, 0.0, 0.0)), _run("x", None)]
    assert canary_failure_lines(runs) == [
        f"relu-xavier/torch/cpu/seed0: {failure} (a failed measurement, not a busy machine;"
        " its speed is judged by other processes' CPU use and its epochs)"
    ]


def test_a_cell_load_gives_its_metrics_and_tags() -> None:
    load = CellLoad(200.0, 150.0, 0.5, 0.0, ("canary -25%", "other processes used 0.50 cores"))
    assert load.metrics() == {
        "canary_before_samples_per_s": 200.0,
        "canary_after_samples_per_s": 150.0,
        "others_cpu_cores": 0.5,
        "steal_fraction": 0.0,
        "canary_change": -0.25,
    }
    assert load.tags() == {
        "speed_stable": "false",
        "speed_unstable_reason": "canary -25%; other processes used 0.50 cores",
    }
    assert CellLoad.from_json(json.loads(json.dumps(asdict(load)))) == load  # a kept cell
    unmeasured = CellLoad(200.0, 200.0, None, None)
    assert unmeasured.tags() == {"speed_stable": "true"}
    assert set(unmeasured.metrics()) == {
        "canary_before_samples_per_s",
        "canary_after_samples_per_s",
        "canary_change",
    }


def test_the_canary_is_a_rate() -> None:
    rate = canary(0.01)  # its minimum number of bursts, however fast the machine
    assert rate > 0 and math.isfinite(rate)


def _canary_on_one_thread(seconds: float) -> float:
    with threadpool_limits(limits=1):
        return canary(seconds)


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: numpy's BLAS has one thread")
def test_the_canary_slows_no_more_than_the_cpu_share_it_loses() -> None:
    """With numpy's BLAS threads, one per core, a core held by another process stalled each of
    the canary's products for a time slice: around a cell, canaries read from 1/85 to all of
    the machine's rate. Against its own steps on one thread, timed in turn under the same load
    (processes spinning on every core, twice over), it must lose nothing more."""
    canaries: list[float] = []
    one_thread: list[float] = []
    with competing_processes(2 * (os.cpu_count() or 1)):
        for _ in range(3):
            canaries.append(canary(0.05))
            one_thread.append(_canary_on_one_thread(0.05))
    ratio = statistics.median(one_thread) / statistics.median(canaries)
    assert ratio < 2.0, (ratio, [round(r) for r in canaries], [round(r) for r in one_thread])


def test_the_canary_after_a_cell_is_no_part_of_its_time() -> None:
    clock = _PhaseClock()
    start = clock.started_at
    with clock.paused():
        time.sleep(0.05)
    assert clock.started_at - start >= 0.05


def _run(stage: str, load: CellLoad | None) -> CellRun:
    cell = Cell(stage, "torch", "cpu", 0)
    result = CellResult(cell, "converged", 0.98, 123_456.0, {}, {}, [], {}, {})
    return CellRun(cell, result, None, 10.0, Path("worker.log"), load=load)


def test_the_table_marks_an_unstable_cell_and_says_why_under_it() -> None:
    unstable = CellLoad(200.0, 100.0, 1.9, 0.0, ("canary -50%", "other processes used 1.90 cores"))
    runs = [
        _run("relu-xavier", unstable),
        _run("adam", CellLoad(1.0, 1.0, 0.0, 0.0)),
        _run("dropout", None),
    ]
    specs = {name: load_stage(name) for name in ("relu-xavier", "adam", "dropout")}
    lines = results_table(runs, specs).splitlines()
    assert lines[2].endswith("123,456!") and lines[3].endswith("123,456")
    assert lines[4].endswith("123,456")  # not watched: not marked
    assert lines[-1] == (
        "! speed not stable: relu-xavier/torch/cpu/seed0 canary -50%, other processes used"
        " 1.90 cores"
    )
    assert "!" not in results_table(runs[1:], specs)


def test_competing_processes_make_the_machine_busy_and_a_cell_unstable() -> None:
    """Two processes spinning (on this 2-core machine: every core) are seen by the probe and
    flag an interval watched as a cell is."""
    with competing_processes(2):
        activity = probe_activity()
        watch = watch_before()
        time.sleep(0.5)
        load = watch_after(watch, {})
    assert activity.others_cores is not None and activity.others_cores > 1.0
    reason = busy_reason(activity, os.cpu_count() or 1)
    assert reason is not None and reason.startswith("other processes use ")
    assert load.others_cpu_cores is not None and load.others_cpu_cores > 1.0
    assert not load.stable and load.tags()["speed_stable"] == "false"
    assert "other processes used" in load.tags()["speed_unstable_reason"]
    assert not load.canary_failure  # a load slows the canary; it does not break it
