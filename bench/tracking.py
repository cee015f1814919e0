"""MLflow recording: the only module that imports mlflow.

One parent run per invocation and one nested run per cell. Every run is ended FINISHED, FAILED or
KILLED by the code that started it, so no run is left RUNNING.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Literal

from bench.errors import BenchError
from bench.matrix import CellRun
from bench.runner import Cell, CellResult, EpochRecord
from bench.spec import StageSpec, stage_path

DEFAULT_EXPERIMENT = "mnist-tutorial"
RESULTS_DIR = Path("results")
RunStatus = Literal["FINISHED", "FAILED", "KILLED"]


def default_tracking_uri() -> str:
    return f"sqlite:///{(RESULTS_DIR / 'mlflow.db').resolve()}"


def resolve_tracking_uri(cli_value: str | None) -> str:
    """--tracking-uri wins, then MLFLOW_TRACKING_URI, then the project's SQLite store."""
    return cli_value or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def _artifact_location(uri: str) -> str | None:
    """Artifacts beside a local SQLite store (results/artifacts); servers choose their own."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").resolve().as_uri()


def _quiet_mlflow() -> None:
    # Fail fast on an unreachable server instead of retrying for minutes.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def _quiet_loggers() -> None:
    # MLflow sets its loggers up on import; its INFO lines (database migrations) are noise here.
    for name in ("alembic", "mlflow"):
        logging.getLogger(name).setLevel(logging.WARNING)


class Tracker:
    """Opens the store and experiment up front, so a bad store fails before any training."""

    def __init__(self, uri: str, experiment: str) -> None:
        _quiet_mlflow()
        import mlflow  # noqa: F401  (imported here so the CLI's `list` never pays for it)
        from mlflow.tracking import MlflowClient

        _quiet_loggers()
        self.uri = uri
        try:
            if uri.startswith("sqlite:///"):
                Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            self._client = MlflowClient(tracking_uri=uri)
            found = self._client.get_experiment_by_name(experiment)
            self.experiment_id = (
                found.experiment_id
                if found is not None
                else self._client.create_experiment(
                    experiment, artifact_location=_artifact_location(uri)
                )
            )
        except Exception as exc:  # any failure here means the store is not usable
            reason = " ".join(str(exc).split())[:200]
            raise BenchError(
                f"tracking store {uri} is not usable ({type(exc).__name__}: {reason}); "
                "start it or pass a working --tracking-uri / MLFLOW_TRACKING_URI"
            ) from None

    def start_parent(self, name: str, params: dict[str, str], tags: dict[str, str]) -> str:
        run = self._client.create_run(self.experiment_id, run_name=name, tags=tags)
        self._log_params(run.info.run_id, params)
        return str(run.info.run_id)

    def start_cell(self, parent_id: str, cell: Cell, params: dict[str, str]) -> str:
        tags = {
            "mlflow.parentRunId": parent_id,
            "stage": cell.stage,
            "backend": cell.backend,
            "device": cell.device,
            "seed": str(cell.seed),
        }
        run = self._client.create_run(self.experiment_id, run_name=cell.name, tags=tags)
        self._log_params(run.info.run_id, params)
        return str(run.info.run_id)

    def log_epoch(self, run_id: str, record: EpochRecord) -> None:
        from mlflow.entities import Metric

        now = _now_ms()
        self._client.log_batch(
            run_id,
            metrics=[
                Metric(key, float(getattr(record, key)), now, record.epoch)
                for key in ("train_loss", "val_accuracy", "epoch_seconds")
            ],
        )

    def finish_cell(
        self, run_id: str, result: CellResult, wall_seconds: float, files: list[Path]
    ) -> None:
        """Record a finished cell's final metrics, environment and artifacts, then end it."""
        from mlflow.entities import Metric, RunTag

        now = _now_ms()
        finals = {"test_accuracy": result.test_accuracy, "wall_seconds": wall_seconds}
        if result.train_samples_per_s is not None:
            finals["train_samples_per_s"] = result.train_samples_per_s
        if result.diverged_step is not None:
            finals["diverged_step"] = float(result.diverged_step)
        finals.update({f"time_{k}_seconds": v for k, v in result.timings.items()})
        self._client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in finals.items()],
            tags=[RunTag("outcome", result.outcome)],
        )
        self._log_params(run_id, result.environment)
        self._log_losses(run_id, result)
        for path in files:
            self._client.log_artifact(run_id, str(path))
        self.end(run_id, "FINISHED")

    def log_artifact(self, run_id: str, path: Path) -> None:
        self._client.log_artifact(run_id, str(path))

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self._client.set_tag(run_id, key, value)

    def log_metrics(self, run_id: str, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = _now_ms()
        self._client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()])

    def end(self, run_id: str, status: RunStatus) -> None:
        self._client.set_terminated(run_id, status)

    def _log_params(self, run_id: str, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        if params:
            self._client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])

    def _log_losses(self, run_id: str, result: CellResult) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "step_losses.csv"
            lines = ["step,loss"] + [
                f"{i},{loss!r}" for i, loss in enumerate(result.step_losses.tolist(), start=1)
            ]
            path.write_text("\n".join(lines) + "\n")
            self._client.log_artifact(run_id, str(path))


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


class MatrixRecord:
    """Records the cells of one invocation as nested runs under its parent run."""

    def __init__(self, tracker: Tracker, parent_id: str, specs: dict[str, StageSpec]) -> None:
        self._tracker = tracker
        self._parent_id = parent_id
        self._specs = specs

    def start_cell(self, cell: Cell) -> str:
        return self._tracker.start_cell(self._parent_id, cell, self._specs[cell.stage].flat())

    def log_epoch(self, run_id: str, record: EpochRecord) -> None:
        self._tracker.log_epoch(run_id, record)

    def finish_cell(self, run_id: str, run: CellRun) -> None:
        files = [stage_path(run.cell.stage), run.log_path]
        if run.result is not None:
            self._tracker.finish_cell(run_id, run.result, run.wall_seconds, files)
            return
        self._tracker.set_tags(run_id, {"outcome": "failed", "error": (run.error or "")[:500]})
        for path in files:
            self._tracker.log_artifact(run_id, path)
        self._tracker.end(run_id, "FAILED")

    def end(self, run_id: str, status: str) -> None:
        self._tracker.end(run_id, status)  # type: ignore[arg-type]
