"""The A/A study of `bench compare`: pairs of real short runs that differ in nothing (same
commit, same options, seed 0), each pair compared; every exit 1 is a false alarm.

    python -m tests.aa_study --pairs 20 [--seeds 5] [--epochs 4] [--store DIR] [--chain]
    python -m tests.aa_study --rejudge [--store DIR]

--seeds K: each run trains seeds 0..K-1, one process each, so that compare judges speed over
processes (K >= 5: an exact Mann-Whitney test over 5 vs 5 processes can reach p < 0.01); with
--seeds 1 it judges one process a side against the run-to-run noise floor (--run-noise).

--chain pairs each run with the next (run i against run i + 1): N pairs from N + 1 runs instead
of 2N, for a machine where a run takes minutes. The rate stays unbiased; its pairs share runs,
so it is less certain than the same count of disjoint pairs.

--rejudge compares every recorded pair again with the current `bench compare` (the runs stay):
the study's hour of training is not repeated when only the judgement changed.

Each pair is compared twice: as CI would (default settings: a run flagged speed_stable false
makes it inconclusive, exit 3) and with --allow-busy (the statistics alone, judged whatever the
machine did). One JSON line per pair is appended to STORE/aa_study.jsonl as it finishes, with
the load average and the runs' busy-machine tags, so that a study cut short still counts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.conftest import ROOT
from tests.live import PATIENCE_S, bench_command, run_command, store_runs


def _newest_parent(uri: str) -> Any:
    runs = [r for r in store_runs(uri) if r.data.tags.get("kind") == "matrix"]
    return max(runs, key=lambda r: r.info.start_time)


def _one_run(uri: str, epochs: int, seeds: int, tag: str) -> dict[str, str]:
    args = ("--epochs", str(epochs), "--seeds", str(seeds), "--tag", f"aa={tag}")
    done = subprocess.run(
        run_command(uri, *args, "--cell-timeout", "3600"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if done.returncode != 0:
        raise SystemExit(f"run {tag} failed ({done.returncode}): {done.stderr.strip()}")
    parent = _newest_parent(uri)
    cells = [
        r
        for r in store_runs(uri)
        if r.data.tags.get("invocation") == parent.info.run_id and r.data.tags.get("kind") == "cell"
    ]
    return {
        "run_id": parent.info.run_id,
        "machine_busy": parent.data.tags.get("machine_busy", "?"),
        "speed_stable": parent.data.tags.get("speed_stable", "?"),
        "cells_speed_stable": ",".join(c.data.tags.get("speed_stable", "?") for c in cells),
    }


def _compare(uri: str, base: str, cand: str, *extra: str) -> int:
    done = subprocess.run(
        bench_command("compare", base, cand, "--tracking-uri", uri, *extra),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=PATIENCE_S,
    )
    if done.returncode == 2:
        raise SystemExit(f"compare {base} {cand}: {done.stderr.strip()}")
    return done.returncode


def _summary(rows: list[dict[str, Any]]) -> str:
    n = len(rows)
    if n == 0:
        return "no pair finished"
    runs = {side["run_id"]: side for row in rows for side in (row["a"], row["b"])}
    flagged = sum(side["speed_stable"] == "false" for side in runs.values())
    lines = [f"{n} A/A pairs of {len(runs)} runs; {flagged} runs tagged speed_stable false"]
    for mode in ("default", "allow_busy"):
        codes = [row[mode] for row in rows]
        alarms, inconclusive = codes.count(1), codes.count(3)
        lines.append(
            f"  {mode:10s}: false alarms (exit 1) {alarms}/{n} = {alarms / n:.1%},"
            f" inconclusive (exit 3) {inconclusive}/{n}, pass (exit 0) {codes.count(0)}/{n}"
        )
    loads = [row["load_1m"] for row in rows]
    lines.append(f"  load average (1 min) before each pair: {min(loads):.1f} to {max(loads):.1f}")
    return "\n".join(lines)


def _judge(uri: str, row: dict[str, Any]) -> None:
    a, b = row["a"]["run_id"], row["b"]["run_id"]
    row["default"] = _compare(uri, a, b)
    row["allow_busy"] = _compare(uri, a, b, "--allow-busy")


def _rejudge(uri: str, rows: list[dict[str, Any]], log: Path) -> None:
    for row in rows:
        _judge(uri, row)
        print(f"pair {row['pair']}: exit {row['default']}, {row['allow_busy']}", flush=True)
    log.write_text("".join(json.dumps(row) + "\n" for row in rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=5, help="processes a side (5: p >= 1/252)")
    parser.add_argument("--epochs", type=int, default=4, help="the first is warm-up")
    parser.add_argument("--rejudge", action="store_true", help="compare the recorded pairs again")
    parser.add_argument("--store", type=Path, default=ROOT / "results" / "aa_study")
    parser.add_argument("--chain", action="store_true", help="pair each run with the next")
    args = parser.parse_args()
    args.store.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{args.store.resolve()}/mlflow.db"
    log = args.store / "aa_study.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    print(f"store {uri}; {len(rows)} pair(s) already in {log}", flush=True)
    if args.rejudge:
        _rejudge(uri, rows, log)
        print(_summary(rows))
        return
    while len(rows) < args.pairs:
        index = len(rows)
        load = os.getloadavg()[0]
        start = time.monotonic()
        chained = args.chain and rows and rows[-1].get("chain")
        a = rows[-1]["b"] if chained else _one_run(uri, args.epochs, args.seeds, f"{index}a")
        b = _one_run(uri, args.epochs, args.seeds, f"{index}b")
        row = {
            "pair": index,
            "chain": args.chain,
            "load_1m": load,
            "a": a,
            "b": b,
            "seconds": round(time.monotonic() - start),
        }
        _judge(uri, row)
        rows.append(row)
        with log.open("a") as out:
            out.write(json.dumps(row) + "\n")
        print(
            f"pair {index}: exit {row['default']} (default), {row['allow_busy']} (--allow-busy);"
            f" load {load:.1f}; {row['seconds']} s",
            flush=True,
        )
    print(_summary(rows))


if __name__ == "__main__":
    main()
