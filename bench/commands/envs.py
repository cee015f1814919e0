"""`python -m bench envs [--root DIR]`: the cached environments, what they pin and cost."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.execution.environments import ENV_DIR_ENV, Environment, env_root, list_environments

NAME = "envs"
HELP = "list the cached environments: name, pins, disk use, time to make, folder"

_HEADER = ("name", "pins", "MB", "made (s)", "path")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--root",
        type=Path,
        help=f"the environments' folder (default: {ENV_DIR_ENV}, else ~/.cache/mlp-bench/envs)",
    )


def run(args: argparse.Namespace) -> int:
    root = env_root(args.root)
    environments = list_environments(root)
    if not environments:
        print(f"no environments in {root}")
        return 0
    rows = [_HEADER, *(_row(environment) for environment in environments)]
    widths = [max(len(row[column]) for row in rows) for column in range(len(_HEADER) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]))
    return 0


def _row(environment: Environment) -> tuple[str, str, str, str, str]:
    return (
        environment.name,
        " ".join(environment.pins),
        f"{environment.size_bytes / 1e6:.0f}",
        f"{environment.made_s:.1f}",
        str(environment.path),
    )
