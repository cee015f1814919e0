"""Cells the tracking store could not take (locked or read-only past the wait), kept on disk
until `mlp-bench record-pending FOLDER` records them into the runs they belong to.

One folder per cell run, named by its run id: `pending.json` (the store, the run, the result or
the error, the speed figures), the result's arrays, and the files to log as artifacts.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.core.errors import BenchError
from bench.core.types import Cell, CellLoad, CellResult, CellRun

PENDING = "pending.json"


@dataclass(frozen=True)
class KeptCell:
    uri: str
    run_id: str
    run: CellRun
    files: list[Path]  # the artifacts: stage file, worker.log


def keep(folder: Path, uri: str, run_id: str, run: CellRun, files: list[Path]) -> Path:
    """Write what recording `run` into `run_id` needs under folder/run_id; return that."""
    cell_folder = folder / run_id
    cell_folder.mkdir(parents=True, exist_ok=True)
    for path in files:
        shutil.copy(path, cell_folder / path.name)
    if run.result is not None:
        run.result.save_arrays(cell_folder)
    pending: dict[str, Any] = {
        "uri": uri,
        "run_id": run_id,
        "cell": asdict(run.cell),
        "result": run.result.to_json() if run.result is not None else None,
        "error": run.error,
        "wall_seconds": run.wall_seconds,
        "speed": run.speed,
        "load": asdict(run.load) if run.load is not None else None,
        "files": [path.name for path in files],
    }
    (cell_folder / PENDING).write_text(json.dumps(pending))
    return cell_folder


def kept_folders(folder: Path) -> list[Path]:
    """The cells kept under `folder`, oldest first."""
    if not folder.is_dir():
        raise BenchError(
            f"{folder} is not a folder of unrecorded cells; give the folder the error named"
        )
    return sorted((p.parent for p in folder.glob(f"*/{PENDING}")), key=lambda p: p.stat().st_mtime)


def load(cell_folder: Path) -> KeptCell:
    """The cell kept in `cell_folder`; a pending.json that cannot be read back (cut short,
    edited, from another version) is one error naming it."""
    path = cell_folder / PENDING
    try:
        return _kept(cell_folder, json.loads(path.read_text()))
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise BenchError(
            f"{path} cannot be read back ({type(exc).__name__}: {exc}); restore it from the"
            " copy the invocation wrote, or remove its folder to give that cell up"
        ) from None


def _kept(cell_folder: Path, data: dict[str, Any]) -> KeptCell:
    result = CellResult.load(data["result"], cell_folder) if data["result"] else None
    files = [cell_folder / name for name in data["files"]]
    log_path = cell_folder / "worker.log"
    run = CellRun(
        Cell(**data["cell"]),
        result,
        data["error"],
        data["wall_seconds"],
        log_path,
        speed=data["speed"],
        load=CellLoad.from_json(data["load"]) if data.get("load") else None,
    )
    return KeptCell(str(data["uri"]), str(data["run_id"]), run, files)
