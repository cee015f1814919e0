"""From a `run` or `perf` command line to a validated Plan: every input checked, and the
machine probed, before any training starts. The one place the arguments of a matrix are read."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import TYPE_CHECKING

from backends import check_backend, check_known, installed_backends
from bench.core.data import ensure_data
from bench.core.devices import available_cores
from bench.core.errors import BenchError
from bench.core.options import ONEDNN_ONLY, Options
from bench.core.spec import (
    EPOCHS_ENV,
    epochs_from_env,
    parse_stage,
    select_stages,
    with_epochs,
)
from bench.execution.device_choice import resolve_devices
from bench.execution.environments import (
    Environment,
    ensure,
    frameworks_of,
    parse_pins,
    recorded_environment,
)
from bench.execution.invocation import Plan, check_machine
from bench.execution.matrix import build_cells
from bench.recording.resume_plan import load_invocation
from bench.recording.tracking import DEFAULT_EXPERIMENT, Tracker, resolve_tracking_uri

if TYPE_CHECKING:  # ray is imported only when --executor ray is chosen
    from bench.execution.ray_executor import RayExecutor


def seeds_of(args: argparse.Namespace) -> list[int]:
    """--seed values and --seeds K (0..K-1), in order, without repeats; default seed 0."""
    seeds = list(args.seed or []) + list(range(args.seeds or 0))
    return list(dict.fromkeys(seeds or [0]))


def requested_epochs(flag: int | None) -> int | None:
    """--epochs, else MLP_BENCH_EPOCHS (said on a line: a run shortened by the environment
    should never pass for a full one), else None: the stage files' own."""
    if flag is not None:
        return flag
    epochs = epochs_from_env()
    if epochs is not None:
        print(
            f"epochs: {epochs} for every stage, from {EPOCHS_ENV} (--epochs overrides it)",
            flush=True,
        )
    return epochs


def check_in_environment(name: str, where: str, pins: tuple[str, ...]) -> None:
    """A backend asked for in an environment must be one its pins install."""
    check_known(name)
    installs = frameworks_of(pins)
    if name not in installs:
        have = ", ".join(sorted(installs)) or "no framework"
        raise BenchError(
            f"backend {name!r} is not in environment {where!r} (its pins install {have}); add"
            f" a pin of {name} to it or leave out --backend {name}"
        )


def backends_of(args: argparse.Namespace, pins: tuple[str, ...] | None) -> list[str]:
    """--backend, else every backend installed here, or that the environment's pins install."""
    if pins is None:
        backends = list(dict.fromkeys(args.backend or installed_backends()))
        if not backends:
            raise BenchError(
                "no backend installed; install tensorflow or torch (nox -s bench does)"
            )
        for name in backends:
            check_backend(name)
        return backends
    where = args.env if getattr(args, "env", None) else " ".join(pins)
    backends = list(dict.fromkeys(args.backend or sorted(frameworks_of(pins))))
    if not backends:
        raise BenchError(
            f"environment {where!r} installs no framework; pin tensorflow-cpu, torch or jax in it"
        )
    for name in backends:
        check_in_environment(name, where, pins)
    return backends


def pins_of(args: argparse.Namespace, environment: Environment | None) -> tuple[str, ...] | None:
    """The pins the cells' environment is made of: `environment`'s, else --env's; None: the
    cells run in this venv."""
    if environment is not None:
        return environment.pins
    text = getattr(args, "env", None)
    if text is None:
        return None
    if getattr(args, "executor", "local") == "ray":
        raise BenchError("--env runs the cells on this machine; drop --executor ray or --env")
    return parse_pins(text)


def plan_run(
    args: argparse.Namespace,
    refuse_busy: bool = False,
    environment: Environment | None = None,
) -> Plan:
    """Check every input and the machine; with `refuse_busy` (perf) a busy machine is an
    error, else a warning. The cells run in `environment` (else --env's, else this one)."""
    args = argparse.Namespace(**(vars(args) | {"epochs": requested_epochs(args.epochs)}))
    # Each stage file is read here, once: its text is what the workers train from.
    specs = select_stages(args.stage or [], args.stage_file or [], args.epochs)
    if args.accumulate and not args.parity:
        raise BenchError(
            f"--accumulate {args.accumulate} applies in parity mode only; add --parity or drop"
            " --accumulate"
        )
    pins = pins_of(args, environment)
    backends = backends_of(args, pins)
    if args.cuda_graphs and args.dtype == "float64":
        raise BenchError("--cuda-graphs trains in float32 only; drop --dtype float64")
    if pins is not None:
        # Its GPU builds are not probed from here: an environment's cells run on the CPU.
        if set(args.device or ["cpu"]) - {"cpu", "auto"}:
            raise BenchError("cells in an environment (--env) run on the CPU; drop --device gpu")
        devices = ["cpu"]
    elif getattr(args, "executor", "local") == "ray":
        # The cells run on the cluster's nodes, not here: the cluster is checked for GPUs
        # when joined. auto is the CPU there; --device gpu asks for GPU cells.
        devices = list(dict.fromkeys(d for d in args.device or ["cpu"] if d != "auto")) or ["cpu"]
    else:
        choice = resolve_devices(args.device or ["auto"], backends)
        devices = choice.devices
        if choice.note:
            print(choice.note, flush=True)
    if args.cuda_graphs and (devices != ["gpu"] or args.parity):
        raise BenchError(
            "--cuda-graphs replays PyTorch's fast step on a GPU: give --device gpu (alone),"
            " without --parity"
        )
    if args.torch_matmul == "onednn" and (
        args.parity or args.dtype == "float64" or "gpu" in devices
    ):
        raise BenchError(ONEDNN_ONLY)
    # Downloads what is missing, or fails now with the file's name.
    data_dir = ensure_data(args.data_dir, [spec.dataset for spec in specs.values()])
    seeds = seeds_of(args)
    # Last of the inputs, as making it takes minutes; already made: at once.
    if environment is None and pins is not None:
        environment = ensure(pins)
    machine, busy = check_machine(refuse_busy)
    cluster = join_cluster(args, devices)  # last: nothing after it can fail
    cores = cluster.cpus_per_cell if cluster is not None else available_cores()
    options = Options.from_args(args, data_dir=str(data_dir), threads=args.threads or cores)
    return Plan(
        cells=build_cells(specs, backends, devices, seeds),
        specs=specs,
        options=options,
        tracking_uri=resolve_tracking_uri(args.tracking_uri),
        experiment=args.experiment or DEFAULT_EXPERIMENT,
        seeds=seeds,
        machine=machine,
        busy=busy,
        measure_peaks=not args.no_peak,
        cell_timeout_s=args.cell_timeout,
        tags=dict(args.tag or []),
        command=" ".join(sys.argv[1:]),
        cluster=cluster,
        environment=environment,
    )


def join_cluster(args: argparse.Namespace, devices: list[str]) -> RayExecutor | None:
    """--executor ray: the cluster joined (or a local Ray started) and checked; else None."""
    executor = getattr(args, "executor", "local")  # perf runs locally only
    if executor != "ray":
        if getattr(args, "ray_address", None) or getattr(args, "cpus_per_cell", None):
            raise BenchError(
                "--ray-address and --cpus-per-cell apply to --executor ray; add it or drop them"
            )
        return None
    from bench.execution.ray_executor import RaySettings, connect

    return connect(RaySettings(args.ray_address, args.cpus_per_cell, args.retries), devices)


# What `run --resume` may set: where and how the rest runs, not what it is.
_RESUME_MAY_SET = {
    "command",
    "resume",
    "executor",
    "ray_address",
    "cpus_per_cell",
    "retries",
    "tracking_uri",
    "data_dir",
    "cell_timeout",
    "no_peak",
}


def plan_resume(args: argparse.Namespace, defaults: dict[str, object]) -> Plan:
    """The cells of a recorded invocation that did not finish, with its own stages and options,
    to be run under its parent run. `defaults`: the run command's arguments left unset."""
    for name, value in vars(args).items():
        if name in defaults and name not in _RESUME_MAY_SET and value != defaults[name]:
            raise BenchError(
                f"--resume runs the recorded invocation's own cells, stages and options; drop"
                f" --{name.replace('_', '-')}"
            )
    uri = resolve_tracking_uri(args.tracking_uri)
    recorded = load_invocation(Tracker(uri, None).reader, args.resume)
    cells = recorded.unfinished()
    if not cells:
        raise BenchError(
            f"invocation {args.resume} has no cell left to run: all {len(recorded.cells)} finished"
        )
    plan = recorded.plan
    options = Options(**plan["options"])
    specs = {
        name: with_epochs(parse_stage(text, f"recorded {name}.toml"), options.epochs)
        for name, text in plan["stage_texts"].items()
    }
    # The cells run in the environment they began in, made again if it is no longer cached.
    environment = recorded_environment(plan.get("environment"))
    for backend in dict.fromkeys(cell.backend for cell in cells):
        if environment is None:
            check_backend(backend)
        else:
            check_in_environment(backend, environment.name, environment.pins)
    data_dir = ensure_data(
        args.data_dir or options.data_dir, [spec.dataset for spec in specs.values()]
    )
    machine, busy = check_machine(refuse_busy=False)
    devices: list[str] = list(dict.fromkeys(cell.device for cell in cells))
    cluster = join_cluster(args, devices)
    print(
        f"resuming {args.resume}: {len(cells)} of its {len(recorded.cells)} cells did not finish",
        flush=True,
    )
    return Plan(
        cells=cells,
        specs=specs,
        options=dataclasses.replace(options, data_dir=str(data_dir)),
        tracking_uri=uri,
        experiment=recorded.experiment,
        seeds=list(plan["seeds"]),
        machine=machine,
        busy=busy,
        measure_peaks=bool(plan["measure_peaks"]) and not args.no_peak,
        cell_timeout_s=args.cell_timeout or plan["cell_timeout_s"],
        command=" ".join(sys.argv[1:]),
        cluster=cluster,
        resumed=recorded,
        environment=environment,
    )
