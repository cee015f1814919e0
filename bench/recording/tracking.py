"""MLflow recording: writing runs (bench.recording.reader reads them back).

One parent run per invocation and one nested run per cell. Every run is ended FINISHED, FAILED or
KILLED by the code that started it, so no run is left RUNNING; where that code could not (a
`kill -9`, a store that stopped taking writes), the next invocation on the store ends it KILLED.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from bench.core.data import dataset_dir
from bench.core.datasets import get_dataset
from bench.core.errors import BenchError, StoreUnwritable
from bench.core.options import Options
from bench.core.program import PROGRAM
from bench.core.seeding import describe_seeds
from bench.core.spec import StageSpec
from bench.core.types import ENV_PREFIX, EPOCH_METRICS, Cell, CellResult, CellRun, EpochRecord
from bench.recording import markdown, store, unrecorded, views
from bench.recording.reader import GROUP_TAG, INVOCATION_TAG, NOTE_TAG, Reader, RecordedCell
from bench.recording.resume_plan import (
    CLAIM_PREFIX,
    INVOCATION_FILE,
    RecordedInvocation,
    being_resumed,
    owner_of,
)
from bench.recording.scoring import tutorial_comparison
from bench.recording.stats import Member, group_metrics

DEFAULT_EXPERIMENT = "mnist-tutorial"
FLUSH_SECONDS = 10.0  # how often buffered per-epoch metrics are written during a cell
RunStatus = Literal["FINISHED", "FAILED", "KILLED"]
log = logging.getLogger(__name__)

EXPERIMENT_KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"


def run_name(cell: Cell, seed: bool = True) -> str:
    """A run's name in the MLflow UI, the backend first: the runs table cuts names at about 20
    characters, and "relu-xavier/..." left TensorFlow's and PyTorch's rows alike."""
    name = f"{cell.backend} {cell.stage} {cell.device}"
    return f"{name} s{cell.seed}" if seed else name


def _color_tag(backend: str) -> dict[str, str]:
    """The backend's colour for the UI: one per backend in every view, as in the figures (the
    UI's own pick, from the run id, gave two backends one colour)."""
    color = views.run_color(backend)
    return {views.RUN_COLOR_TAG: color} if color else {}


def default_tracking_uri() -> str:
    return f"sqlite:///{(store.RESULTS_DIR / 'mlflow.db').resolve()}"


def resolve_tracking_uri(cli_value: str | None) -> str:
    """--tracking-uri wins, then MLFLOW_TRACKING_URI, then the project's SQLite store; one
    mlp-bench cannot record into fails here, before anything else is done."""
    uri = cli_value or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
    store.check_uri(uri)
    return uri


def _artifact_location(uri: str) -> str | None:
    """Artifacts beside a local SQLite store (results/artifacts); servers choose their own."""
    database = store.sqlite_path(uri)
    if database is None:
        return None
    return (database.parent / store.ARTIFACTS).resolve().as_uri()


def _quiet_mlflow() -> None:
    # Fail fast on an unreachable server instead of retrying for minutes (MLflow's default is 7
    # retries of a 5xx with a doubling backoff); an outage mid-run is then seen in seconds and
    # waited out by store.PatientClient, which keeps the cell once it gives up.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    # A server's client prints two links for every run it ends: noise among the progress lines
    # (and a request each); the invocation prints its own links once.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


def _quiet_loggers() -> None:
    # MLflow sets its loggers up on import; its INFO lines (database migrations) are noise here.
    for name in ("alembic", "mlflow"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # It logs each failed query with its traceback before raising it: a locked store printed
    # ~400 lines. The exception itself is retried, or becomes the one-line error.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


class Tracker:
    """Opens the store and experiment up front, so a bad store fails before any training.
    Writes runs; `reader` reads them back through the same client."""

    reader: Reader

    def __init__(self, uri: str, experiment: str | None) -> None:
        """Open the store; with an experiment name, find or create that experiment. Runs left
        RUNNING by a process that is gone are ended KILLED. Without one (a command that reads
        the store), a SQLite store must exist: a mistyped path is not made a new, empty one."""
        store.check_uri(uri)
        database = store.sqlite_path(uri)
        if experiment is None and database is not None and not database.is_file():
            raise BenchError(
                f"no store at {database}; give a store's --tracking-uri sqlite:///PATH"
            )
        _quiet_mlflow()
        import mlflow  # noqa: F401  (imported here so the CLI's `list` never pays for it)
        from mlflow.tracking import MlflowClient

        _quiet_loggers()
        self.uri = uri
        self.shown_uri = store.redacted(uri)  # the URI as printed and recorded: no password
        retry_s = store.store_retry_s()
        try:
            with store.opening(uri):
                client = MlflowClient(tracking_uri=uri)
                self._client = store.PatientClient(client, self.shown_uri, retry_s)
                self.reader = Reader(self._client, self.shown_uri)
                self._client.search_experiments(max_results=1)  # touches the store: fails here
                if experiment is not None:
                    self.experiment_id = self._experiment(experiment)
                self._end_orphans()
        except StoreUnwritable as exc:  # before any training: a usage error (exit 2)
            raise BenchError(str(exc)) from None
        except BenchError:
            raise
        except Exception as exc:  # any other failure here means the store is not usable
            reason = " ".join(str(exc).split())[:200]
            refused = _refused(reason)
            if refused:
                raise BenchError(
                    f"tracking server {self.shown_uri} refused the credentials ({refused}); set"
                    " MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to a user of its"
                    " basic-auth app"
                ) from None
            served = uri.startswith(("http://", "https://"))
            raise BenchError(
                f"tracking store {self.shown_uri} is not usable ({type(exc).__name__}: {reason});"
                f" {'start it or ' if served else ''}pass a working --tracking-uri /"
                " MLFLOW_TRACKING_URI"
            ) from None

    def _experiment(self, name: str) -> str:
        """The experiment's id, created if new; a deleted one or an artifact folder that cannot
        be written fails now, not after the first cell trained."""
        found = self._client.get_experiment_by_name(name)
        if found is not None and found.lifecycle_stage == "deleted":
            raise BenchError(
                f"experiment {name!r} in {self.shown_uri} is deleted; restore it with "
                f"`MLFLOW_TRACKING_URI={self.shown_uri} mlflow experiments restore --experiment-id "
                f"{found.experiment_id}`, or pass another --experiment"
            )
        location = found.artifact_location if found is not None else _artifact_location(self.uri)
        store.check_artifact_root(location, name)
        if found is not None:
            if EXPERIMENT_KIND_TAG not in found.tags:  # made by an older mlp-bench
                self._client.set_experiment_tag(
                    found.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING
                )
            return str(found.experiment_id)
        # A model-training experiment: MLflow 3 opens any other on its GenAI overview (traces,
        # tokens), where a new user found no runs.
        try:
            return str(
                self._client.create_experiment(
                    name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING}
                )
            )
        except Exception as exc:
            # Another invocation made it since the look-up above (a server takes several at
            # once; a SQLite store is locked around this): use theirs.
            if "RESOURCE_ALREADY_EXISTS" not in str(exc):
                raise
            return str(self._client.get_experiment_by_name(name).experiment_id)

    def _end_orphans(self) -> None:
        """End KILLED the runs left RUNNING by a process of this host that is gone (`kill -9`,
        a crash, a store that stopped taking writes), and say so in one line."""
        experiments = list(self.reader.experiments())
        if not experiments:
            return
        running = self.reader.search(experiments, store.OPEN_HERE)
        gone = [run for run in running if store.owner_gone(run.tags)]
        for run in gone:
            self._client.set_terminated(run.run_id, "KILLED")
        if gone:
            pids = ", ".join(sorted({run.tags["owner_pid"] for run in gone}))
            log.info(
                f"{len(gone)} run(s) in {self.shown_uri} left RUNNING by a process that is gone"
                f" (pid {pids}): marked KILLED"
            )

    def _create_run(
        self, experiment_id: str, name: str, tags: dict[str, str], start_ms: int | None = None
    ) -> str:
        run = self._client.create_run(
            experiment_id,
            start_time=start_ms,
            run_name=name,
            tags={**tags, **store.owner_tags()},
        )
        return str(run.info.run_id)

    def start_parent(self, name: str, params: dict[str, str], tags: dict[str, str]) -> str:
        """An invocation's run. Its command line (param and tag) may hold a tracking URI's
        password: recorded without it, as every reader of the store sees it."""
        tags = {key: store.redacted(value) for key, value in tags.items()}
        run_id = self._create_run(self.experiment_id, name, tags)
        self._log_params(run_id, {key: store.redacted(value) for key, value in params.items()})
        return run_id

    def start_group(self, invocation: str, cell: Cell, seeds: list[int]) -> str:
        """A run for one stage x backend x device group of several seeds: their statistics."""
        tags = {
            INVOCATION_TAG: invocation,
            "kind": "group",
            "stage": cell.stage,
            "backend": cell.backend,
            "device": cell.device,
            **_color_tag(cell.backend),
        }
        run_id = self._create_run(self.experiment_id, run_name(cell, seed=False), tags)
        self._log_params(run_id, {"seeds": describe_seeds(seeds)})
        return run_id

    def start_cell(
        self,
        invocation: str,
        cell: Cell,
        params: dict[str, str],
        group: str | None = None,
        extra_tags: dict[str, str] | None = None,
        start_ms: int | None = None,
    ) -> str:
        """A cell's run, tagged with its invocation's run and its group's (if any). Not nested
        (mlflow.parentRunId): the UI lists a nested run under a collapsed parent row, even
        when a filter selects the cells alone, so a filter could not show the cells."""
        tags = {
            INVOCATION_TAG: invocation,
            **({GROUP_TAG: group} if group else {}),
            "stage": cell.stage,
            "backend": cell.backend,
            "device": cell.device,
            "seed": str(cell.seed),
            "kind": "cell",
            **_color_tag(cell.backend),
            **(extra_tags or {}),
        }
        run_id = self._create_run(self.experiment_id, run_name(cell), tags, start_ms)
        self._log_params(run_id, params)
        return run_id

    def log_epochs(self, run_id: str, records: list[EpochRecord]) -> None:
        """Per-epoch metrics (step = epoch), several epochs in one write."""
        from mlflow.entities import Metric

        now = _now_ms()
        self._client.log_batch(
            run_id,
            metrics=[
                Metric(key, float(getattr(record, key)), now, record.epoch)
                for record in records
                for key in EPOCH_METRICS
            ],
        )

    def finish_cell(
        self, run_id: str, result: CellResult, files: list[Path], metrics: dict[str, float]
    ) -> None:
        """Record a finished cell's environment and artifacts, then its final metrics, and end
        it FINISHED."""
        self.log_cell_details(run_id, result, files)
        self.log_cell_finals(run_id, result, metrics)

    def log_cell_details(
        self, run_id: str, result: CellResult, files: list[Path], data_dir: str = ""
    ) -> None:
        """Environment params, the data set's split as dataset inputs, per-step losses and the
        given files as artifacts."""
        self._log_params(run_id, {ENV_PREFIX + k: v for k, v in result.environment.items()})
        self.log_data_inputs(run_id, result, data_dir)
        self._log_losses(run_id, result)
        for path in files:
            self._client.log_artifact(run_id, str(path))

    def log_data_inputs(self, run_id: str, result: CellResult, data_dir: str) -> None:
        """The cell's data set split as three dataset inputs (contexts train, validation, test;
        for MNIST the tutorial's 55,000/5,000/10,000), so the UI's Dataset column says what a
        cell trained on. The digest is the data's (env.data_sha256), cut to the 36 characters
        MLflow's store holds."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        data_sha256 = result.environment.get("data_sha256", "")
        if not data_sha256:  # hand-made splits (tests): nothing to name
            return
        dataset = get_dataset(result.dataset)
        # The data set's own folder in the data dir (<data dir>/<name>, or the data dir itself).
        source = (
            str(dataset_dir(Path(data_dir), dataset))
            if data_dir
            else f"{dataset.title} {dataset.file_format} files"
        )
        inputs = [
            DatasetInput(
                Dataset(
                    name=f"{dataset.name}-{context}",
                    digest=data_sha256[:16],
                    source_type="local",
                    source=source,
                    profile=json.dumps({"num_rows": rows.size, "rows": rows.describe()}),
                ),
                tags=[InputTag("mlflow.data.context", context)],
            )
            for context, rows in dataset.split.parts().items()
        ]
        self._client.log_inputs(run_id, datasets=inputs)

    def log_cell_finals(
        self,
        run_id: str,
        result: CellResult,
        metrics: dict[str, float],
        tags: dict[str, str] | None = None,
    ) -> None:
        """Accuracy, throughput and the given metrics; the outcome tag and the given tags;
        then end the run."""
        from mlflow.entities import Metric, RunTag

        finals = {"test_accuracy": result.test_accuracy, **result.memory, **metrics}
        if result.train_samples_per_s is not None:
            finals["train_samples_per_s"] = result.train_samples_per_s
            finals.update({f"train_samples_per_s_{k}": v for k, v in result.spread.items()})
        if result.diverged_step is not None:
            finals["diverged_step"] = float(result.diverged_step)
        now = _now_ms()
        self._client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in finals.items()],
            tags=[RunTag(k, v) for k, v in {"outcome": result.outcome, **(tags or {})}.items()],
        )
        self.end(run_id, "FINISHED")

    def record_reproduction(
        self,
        recorded: RecordedCell,
        run: CellRun,
        bit_identical: bool,
        differences: dict[str, tuple[str, str]],
    ) -> str:
        """The rerun as its own run beside the original, tagged with the verdict."""
        assert run.result is not None and recorded.stage_text is not None
        tags = {
            "kind": "reproduction",
            "reproduces": recorded.run_id,
            "stage": recorded.cell.stage,
            "backend": recorded.cell.backend,
            "device": recorded.cell.device,
            "seed": str(recorded.cell.seed),
            "bit_identical": str(bit_identical).lower(),
            "environment_differences": ", ".join(differences)[:500] or "none",
        }
        run_id = self._create_run(recorded.experiment_id, f"reproduce {recorded.cell.name}", tags)
        option_params = {k: v for k, v in recorded.params.items() if k.startswith("option.")}
        self._log_params(run_id, option_params)
        with tempfile.TemporaryDirectory() as tmp:
            stage_file = Path(tmp) / f"{recorded.cell.stage}.toml"
            stage_file.write_text(recorded.stage_text)
            self.finish_cell(
                run_id, run.result, [stage_file, run.log_path], {"wall_seconds": run.wall_seconds}
            )
        return run_id

    def log_artifact(self, run_id: str, path: Path, folder: str | None = None) -> None:
        self._client.log_artifact(run_id, str(path), folder)

    def log_table(self, run_id: str, columns: dict[str, list[Any]], name: str) -> None:
        """A table (a dict of columns) as the artifact `name`, shown by the UI as a table."""
        self._client.log_table(run_id, data=columns, artifact_file=name)

    def set_description(self, run_id: str, text: str) -> None:
        """The run's description (Markdown) in the MLflow UI, as it is."""
        self._client.set_tag(run_id, NOTE_TAG, text)

    def save_view(self, experiment_id: str, invocation: str) -> str | None:
        """The invocation's saved view in the UI (bench.recording.views.save)."""
        return views.save(self._client, experiment_id, invocation, self.reader.page_size)

    def log_invocation(self, run_id: str, plan: dict[str, Any]) -> None:
        """What an invocation is about to run, on its parent run, for `run --resume`."""
        self._client.log_dict(run_id, plan, INVOCATION_FILE)

    def claim_resume(self, invocation: RecordedInvocation) -> None:
        """Make this process the one resuming `invocation`, before it writes anything else to
        it; another process that claimed it first is an error (nothing is written then).

        The claim is the parent's param `resume_claim.N` (N: the resumes claimed before, as
        read at planning), with this process as its value. An MLflow param is written once: the
        SQL store inserts it under the primary key (run, key), so of two processes that read
        the same N, the database's own uniqueness check lets exactly one insert, on SQLite
        (writes serialised by its lock) as on the PostgreSQL behind a tracking server (a
        unique-key violation); the other gets "Changing param values is not allowed". A tag
        could not do this: set_tag overwrites, so both would read back "their" value unless a
        settle time outlasted every gap between the two writes. A process that plans after
        the claim sees it in load_invocation."""
        from mlflow.exceptions import MlflowException

        key = f"{CLAIM_PREFIX}{invocation.resumes + 1}"
        mine = json.dumps(store.owner_tags(), sort_keys=True)
        try:
            self._client.log_param(invocation.parent_id, key, mine)
        except MlflowException:
            holder = self._client.get_run(invocation.parent_id).data.params.get(key)
            if holder is None or holder == mine:  # not a lost claim: the store's own failure
                raise
            raise BenchError(being_resumed(invocation.parent_id, owner_of(holder))) from None

    def reopen(self, invocation: RecordedInvocation, cells: list[Cell]) -> None:
        """Before a resumed invocation runs `cells` (after claim_resume): its runs left
        RUNNING are ended KILLED, then its parent and the groups of `cells` are RUNNING again,
        owned by this process."""
        for run_id in invocation.open_runs:
            self._client.set_terminated(run_id, "KILLED")
        if invocation.open_runs:
            log.info(f"{len(invocation.open_runs)} run(s) left RUNNING: marked KILLED")
        groups = {cell.group for cell in cells}
        reopened = [invocation.parent_id] + [
            run_id for group, run_id in invocation.group_ids.items() if group in groups
        ]
        for run_id in reopened:
            self._client.update_run(run_id, status="RUNNING")
            self.set_tags(run_id, store.owner_tags())
        # Counted from the claims, not read back from a tag that anything could have set.
        self.set_tags(invocation.parent_id, {"resumes": str(invocation.resumes + 1)})

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self._client.set_tag(run_id, key, store.redacted(value))

    def log_metrics(self, run_id: str, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = _now_ms()
        self._client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()])

    def end(self, run_id: str, status: RunStatus) -> None:
        """End a run. Once the store has stopped taking writes, the run stays RUNNING: the next
        invocation on the store ends it (its process is gone), record-pending records it."""
        if not self._client.gave_up:
            self._client.set_terminated(run_id, status)

    def record_failed(self, run_id: str, error: str, files: list[Path]) -> None:
        """A cell that failed: its error, its files (the log says why), ended FAILED."""
        self.set_tags(run_id, {"outcome": "failed", "error": error[:500]})
        for path in files:
            self.log_artifact(run_id, path)
        self.end(run_id, "FAILED")

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


def _refused(reason: str) -> str | None:
    """HTTP 401 or 403 in MLflow's words for a failed request (None: another failure)."""
    for code, name in (("401", "unauthorized"), ("403", "forbidden")):
        if f"code {code}" in reason or f"{code} {name.title()}" in reason:
            return f"HTTP {code} {name}"
    return None


def _now_ms() -> int:
    return int(time.time() * 1000)


def cell_description(spec: StageSpec) -> str:
    """A cell run's description in the MLflow UI: the stage's change and where it departs
    from the tutorial's code."""
    expected = spec.expected
    return (
        f"**{markdown.text(spec.name)}**: {markdown.text(spec.description)}\n\n"
        f"Tutorial: {markdown.text(expected.tutorial)}; this project expects"
        f" {markdown.text(expected.describe())}.\n\nDeviations from the tutorial's code:"
        f" {markdown.text(spec.tutorial_deviations)}"
    )


class MatrixRecord:
    """Records an invocation's cells: invocation run -> one run per stage x backend x device
    group (statistics over its seeds) -> one run per cell."""

    def __init__(
        self,
        tracker: Tracker,
        parent_id: str,
        specs: dict[str, StageSpec],
        cells: list[Cell],
        options: Options,
        resumed: RecordedInvocation | None = None,
        cell_tags: dict[str, str] | None = None,
    ) -> None:
        """`cells` are those to run; a `resumed` invocation brings the cells that finished
        before and its group runs, whose statistics take in both. `cell_tags` go on every
        cell's run (the environment it ran in)."""
        self._tracker = tracker
        self._cell_tags = cell_tags or {}
        self._parent_id = parent_id
        self._specs = specs
        self._options = options
        self._pending = Counter(cell.group for cell in cells)
        every = resumed.cells if resumed is not None else cells
        self._seeds = {g: [c.seed for c in every if c.group == g] for g in self._pending}
        self._group_ids: dict[str, str] = {}
        self._members: dict[str, list[Member]] = {}
        if resumed is not None:
            for group, run_id in resumed.group_ids.items():
                self._group_ids[group] = run_id
                self._members[group] = [
                    member for cell, member in resumed.finished.items() if cell.group == group
                ]
        self._pending_epochs: dict[str, list[EpochRecord]] = {}
        self._last_flush: dict[str, float] = {}

    def start_cell(self, cell: Cell, start_ms: int | None = None) -> str:
        """The cell's run, started now, or at `start_ms` (a cell that ran elsewhere and is
        recorded when it comes back: the UI's duration is then its own)."""
        spec = self._specs[cell.stage]
        params = {**spec.flat(), **self._options.record(cell.backend)}
        tags = {NOTE_TAG: cell_description(spec), **self._cell_tags}
        return self._tracker.start_cell(
            self._parent_id, cell, params, self._group_id(cell), tags, start_ms
        )

    def log_epoch(self, run_id: str, record: EpochRecord) -> None:
        """Buffered: written every FLUSH_SECONDS, so the live view in the MLflow UI stays
        current while the store is not written (and the cores not disturbed) every epoch."""
        pending = self._pending_epochs.setdefault(run_id, [])
        pending.append(record)
        if time.perf_counter() - self._last_flush.get(run_id, 0.0) >= FLUSH_SECONDS:
            # A store that stopped taking writes does not stop the cell: its end keeps it.
            with contextlib.suppress(StoreUnwritable):
                self._flush(run_id)

    def _flush(self, run_id: str) -> None:
        records = self._pending_epochs.pop(run_id, [])
        if records:
            self._tracker.log_epochs(run_id, records)
        self._last_flush[run_id] = time.perf_counter()

    def finish_cell(self, run_id: str, run: CellRun) -> None:
        # The stage text read at planning, which the worker trained from and the params come
        # from; the stage file itself may have been edited since.
        stage_file = run.log_path.parent / f"{run.cell.stage}.toml"
        stage_file.write_text(self._specs[run.cell.stage].text)
        files = [stage_file, run.log_path]
        try:
            self._record(run_id, run, files)
        except StoreUnwritable as exc:  # the trained result is kept, not lost
            uri = self._tracker.uri
            kept = unrecorded.keep(store.unrecorded_dir(uri), uri, run_id, run, files)
            raise StoreUnwritable(
                f"{exc}; {run.cell.name} is kept in {kept}: once the store takes writes, record"
                f" it with `{PROGRAM} record-pending {kept.parent}`"
            ) from None
        group = run.cell.group
        self._pending[group] -= 1
        if group in self._group_ids:
            self._members[group].append(Member.of(run))
            if self._pending[group] == 0:
                self._close_group(group)

    def _record(self, run_id: str, run: CellRun, files: list[Path]) -> None:
        """The cell's epochs, artifacts and finals, with the speed figures the execution
        derived (CellRun.speed): the recorder computes none of its own."""
        self._flush(run_id)
        placement = run.placement_tags()  # the node and retries of a cluster's cell
        if run.result is not None:
            self._tracker.log_cell_details(run_id, run.result, files, self._options.data_dir)
            tags = {**placement, **(run.load.tags() if run.load is not None else {})}
            spec = self._specs[run.cell.stage]
            tutorial, met = tutorial_comparison(spec, run.result)
            tags["expectation_met"] = met
            retries = {"retries": float(len(run.retries))} if run.node else {}
            self._tracker.log_cell_finals(run_id, run.result, run.speed | tutorial | retries, tags)
        else:
            self._tracker.set_tags(run_id, placement)
            self._tracker.record_failed(run_id, run.error or "", files)

    def end(self, run_id: str, status: str) -> None:
        with contextlib.suppress(Exception):  # the epochs so far, if the store still answers
            self._flush(run_id)
        self._tracker.end(run_id, status)  # type: ignore[arg-type]

    def close(self, status: RunStatus) -> None:
        """End the groups still open (an interrupted or failed invocation)."""
        for group in list(self._group_ids):
            if self._pending[group] > 0:
                self._pending[group] = 0
                self._tracker.end(self._group_ids[group], status)

    def _group_id(self, cell: Cell) -> str | None:
        """The cell's group run, where the group has several seeds to take statistics over;
        None for a group of one (its run would be a row of "-")."""
        group = cell.group
        if len(self._seeds[group]) == 1:
            return None
        if group not in self._group_ids:
            self._group_ids[group] = self._tracker.start_group(
                self._parent_id, cell, self._seeds[group]
            )
            self._members[group] = []
        return self._group_ids[group]

    def _close_group(self, group: str) -> None:
        members = self._members[group]
        self._tracker.log_metrics(self._group_ids[group], group_metrics(members))
        failed = any(member.outcome == "failed" for member in members)
        self._tracker.end(self._group_ids[group], "FAILED" if failed else "FINISHED")
