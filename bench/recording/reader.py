"""The one reader of the store: every command that reads runs back (report, compare, resume,
reproduce, scale, the saved views) reads them through here, as one recorded-cell type.

MLflow's search returns one page (1,000 runs unless told more, at most 50,000); `search_runs`
follows its page token to the end, so an invocation of any size is read whole.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.core.errors import BenchError
from bench.core.spec import ExpectedSpec, StageSpec, parse_stage, with_epochs
from bench.core.types import EPOCH_METRICS, Cell

# On every cell and group run: the id of the invocation's (parent) run, so
# `tags.invocation = '<id>' and tags.kind = 'cell'` finds an invocation's cells.
INVOCATION_TAG = "invocation"
GROUP_TAG = "group_run"  # on a cell of a group of several seeds: the group's run
# A run's (and an experiment's) description in the MLflow UI, in Markdown.
NOTE_TAG = "mlflow.note.content"
# The kinds of parent run (the tag `kind` of an invocation's run). A comparison has no cells.
PARENT_KINDS = ("matrix", "perf", "parity", "comparison")
PAIRABLE_KINDS = ("matrix", "perf")  # the parents whose cells `compare` can pair
STEP_LOSSES = "step_losses.csv"  # a finished cell's artifact: its loss at every step
PAGE_SIZE = 1_000  # MLflow's own default page; every page is followed, so this bounds nothing
# Artifacts of a parent run that the report shows as they are (perf's table, parity's curve).
_TEXT_ARTIFACTS = (".txt",)
_IMAGE_ARTIFACTS = (".png",)


def search_runs(
    client: Any,
    experiment_ids: list[str],
    filter_string: str = "",
    order_by: list[str] | None = None,
    page_size: int = PAGE_SIZE,
    limit: int | None = None,
) -> list[Any]:
    """Every run the search finds, page after page (MLflow's Run objects); `limit` stops after
    that many (the newest run: limit 1)."""
    found: list[Any] = []
    token: str | None = None
    while limit is None or len(found) < limit:
        size = page_size if limit is None else min(page_size, limit - len(found))
        page = client.search_runs(
            experiment_ids,
            filter_string=filter_string,
            max_results=size,
            order_by=order_by,
            page_token=token,
        )
        found += list(page)
        token = page.token
        if not token:
            break
    return found


@dataclass(frozen=True)
class RecordedRun:
    """Any run as the store holds it: a parent, a group, a cell, a comparison."""

    run_id: str
    experiment_id: str
    name: str
    status: str  # RUNNING, FINISHED, FAILED, KILLED
    start_time: int  # ms since the epoch
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]
    deleted: bool = False

    @property
    def kind(self) -> str:
        return self.tags.get("kind", "")

    @classmethod
    def of(cls, run: Any) -> RecordedRun:
        """From MLflow's Run."""
        return cls(
            run_id=str(run.info.run_id),
            experiment_id=str(run.info.experiment_id),
            name=str(run.info.run_name or run.info.run_id),
            status=str(run.info.status),
            start_time=int(run.info.start_time or 0),
            tags=dict(run.data.tags),
            params=dict(run.data.params),
            metrics=dict(run.data.metrics),
            deleted=run.info.lifecycle_stage == "deleted",
        )


def cell_of(tags: dict[str, str], seed: int | None = None) -> Cell:
    """The cell a cell run's (or, with a seed, a group run's) tags name; "?" where a tag is
    missing, as the report shows it."""
    return Cell(
        tags.get("stage", "?"),
        tags.get("backend", "?"),
        tags.get("device", "?"),  # type: ignore[arg-type]  # what was recorded, shown as is
        int(tags.get("seed", "0")) if seed is None else seed,
    )


@dataclass(frozen=True)
class RecordedCell:
    """One cell run as the store holds it: what the report, compare, resume, reproduce and
    scale read back. The per-epoch histories, stage file and step losses are read only where
    asked for (Reader.cells): empty, None and None otherwise, or where the run has none."""

    run_id: str
    experiment_id: str
    cell: Cell
    status: str
    start_time: int
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]
    histories: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    stage_text: str | None = None  # the stage file it trained from (its artifact)
    spec: StageSpec | None = None  # that file parsed, with the epochs it ran
    step_losses: np.ndarray | None = None

    @property
    def stage(self) -> str:
        return self.cell.stage

    @property
    def backend(self) -> str:
        return self.cell.backend

    @property
    def device(self) -> str:
        return self.cell.device

    @property
    def seed(self) -> int:
        return self.cell.seed

    @property
    def outcome(self) -> str:
        return self.tags.get("outcome", "failed" if "error" in self.tags else "unfinished")

    @property
    def label(self) -> str:
        return f"{self.backend} {self.device} s{self.seed}"

    @property
    def expected(self) -> ExpectedSpec | None:
        return self.spec.expected if self.spec is not None else None


@dataclass(frozen=True)
class Invocation:
    """A parent run, its cells, and the store it is in: what a report is made of."""

    run_id: str
    experiment_id: str
    name: str
    kind: str
    status: str
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]
    cells: list[RecordedCell]
    tracking_uri: str
    view: str | None = None  # its saved view in the MLflow UI, where it has one
    texts: dict[str, str] = field(default_factory=dict)  # the parent's text artifacts
    images: dict[str, bytes] = field(default_factory=dict)  # the parent's PNG artifacts

    @property
    def stages(self) -> list[str]:
        return list(dict.fromkeys(cell.stage for cell in self.cells))


def latest_attempts(runs: Iterable[RecordedRun]) -> list[RecordedRun]:
    """One run per cell: a resumed invocation ran again the cells that had not finished, and
    the later run stands for the cell (the earlier, KILLED or FAILED, stays in the store)."""
    latest: dict[tuple[str, ...], RecordedRun] = {}
    for run in sorted(runs, key=lambda r: r.start_time):
        key = tuple(run.tags.get(k, "") for k in ("stage", "backend", "device", "seed"))
        latest.pop(key, None)  # re-inserted: the order stays by start time
        latest[key] = run
    return list(latest.values())


class Reader:
    """Reads runs back from a store through its client (bench.recording.store.PatientClient,
    from Tracker.reader)."""

    def __init__(self, client: Any, shown_uri: str, page_size: int = PAGE_SIZE) -> None:
        self._client = client
        self.shown_uri = shown_uri  # the URI as messages name it: no password
        self.page_size = page_size

    # ---- runs ---------------------------------------------------------------------------

    def search(
        self,
        experiment_ids: list[str],
        filter_string: str = "",
        order_by: list[str] | None = None,
        limit: int | None = None,
    ) -> list[RecordedRun]:
        runs = search_runs(
            self._client, experiment_ids, filter_string, order_by, self.page_size, limit
        )
        return [RecordedRun.of(run) for run in runs]

    def newest(self, experiment_ids: list[str], filter_string: str) -> RecordedRun | None:
        found = self.search(experiment_ids, filter_string, ["attributes.start_time DESC"], 1)
        return found[0] if found else None

    def run(self, run_id: str, missing: str) -> RecordedRun:
        """The run; one the store does not hold (or a malformed id) is BenchError(missing)."""
        from mlflow.exceptions import MlflowException

        try:
            return RecordedRun.of(self._client.get_run(run_id))
        except MlflowException:
            raise BenchError(missing) from None

    def invocation_runs(self, parent: RecordedRun, kind: str | None = None) -> list[RecordedRun]:
        """The runs tagged with the invocation (cells and groups; with `kind`, those alone),
        oldest first."""
        query = f"tags.{INVOCATION_TAG} = '{parent.run_id}'"
        if kind is not None:
            query += f" and tags.kind = '{kind}'"
        return self.search([parent.experiment_id], query, ["attributes.start_time ASC"])

    # ---- experiments --------------------------------------------------------------------

    def experiments(self) -> dict[str, str]:
        """Every active experiment: id -> name."""
        return {str(e.experiment_id): str(e.name) for e in self._client.search_experiments()}

    def experiment_name(self, experiment_id: str) -> str:
        return str(self._client.get_experiment(experiment_id).name)

    def experiment_id(self, name: str) -> str | None:
        found = self._client.get_experiment_by_name(name)
        return None if found is None else str(found.experiment_id)

    def experiment_tags(self, experiment_id: str) -> dict[str, str]:
        return dict(self._client.get_experiment(experiment_id).tags)

    # ---- cells --------------------------------------------------------------------------

    def cells(
        self,
        parent: RecordedRun,
        histories: tuple[str, ...] = (),
        stage_files: bool = False,
        losses: bool = False,
    ) -> list[RecordedCell]:
        """The invocation's cells, one per cell (its latest attempt), oldest first, with the
        per-epoch `histories`, stage files and step losses asked for."""
        specs: dict[tuple[str, str], tuple[str | None, StageSpec | None]] = {}
        cells = []
        for run in self._cell_runs(parent):
            cell = cell_of(run.tags)
            text, spec = None, None
            if stage_files:
                # One stage file per stage and epochs: cells of one stage share it.
                key = (cell.stage, run.params.get("training.epochs", ""))
                if key not in specs:
                    specs[key] = self._stage_spec(run, cell.stage)
                text, spec = specs[key]
            cells.append(
                RecordedCell(
                    run_id=run.run_id,
                    experiment_id=run.experiment_id,
                    cell=cell,
                    status=run.status,
                    start_time=run.start_time,
                    tags=run.tags,
                    params=run.params,
                    metrics=run.metrics,
                    histories={key: self.history(run.run_id, key) for key in histories},
                    stage_text=text,
                    spec=spec,
                    step_losses=self._losses(run.run_id) if losses else None,
                )
            )
        return cells

    def _cell_runs(self, parent: RecordedRun) -> list[RecordedRun]:
        """The invocation's cells by their tag; runs recorded before the tag existed, by
        nesting (parent -> group -> cell, or parent -> cell)."""
        tagged = self.invocation_runs(parent, "cell")
        if tagged:
            return latest_attempts(tagged)
        found: list[RecordedRun] = []
        level = [parent.run_id]
        for _ in range(2):
            children: list[RecordedRun] = []
            for run_id in level:
                children += self.search(
                    [parent.experiment_id],
                    f"tags.mlflow.parentRunId = '{run_id}'",
                    ["attributes.start_time ASC"],
                )
            found += [r for r in children if r.kind == "cell"]
            level = [r.run_id for r in children if r.kind == "group"]
        return sorted(found, key=lambda r: r.start_time)

    def cell(self, run_id: str) -> RecordedCell:
        """A finished cell run read back whole, to run it again: its stage file and step
        losses must be there."""
        run = self.run(
            run_id,
            f"no run {run_id!r} in {self.shown_uri}; copy a cell's run id from the MLflow UI"
            " and pass the store it is in with --tracking-uri",
        )
        tags = run.tags
        if tags.get("kind", "cell") != "cell" or "stage" not in tags or "seed" not in tags:
            raise BenchError(
                f"run {run_id} is not a cell run (kind {tags.get('kind')!r}); "
                "give the id of a STAGE/BACKEND/DEVICE/seedN run"
            )
        cell = cell_of(tags)
        stage_text = self.text(run_id, f"{cell.stage}.toml")
        losses = self._losses(run_id)
        if stage_text is None or losses is None:
            raise BenchError(
                f"run {run_id} has no stage file or step losses (it did not"
                " finish); reproduce a finished cell"
            )
        return RecordedCell(
            run_id=run_id,
            experiment_id=run.experiment_id,
            cell=cell,
            status=run.status,
            start_time=run.start_time,
            tags=tags,
            params=run.params,
            metrics=run.metrics,
            stage_text=stage_text,
            step_losses=losses,
        )

    def history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """A metric's value at each step (the last one written, where a step has several)."""
        history = self._client.get_metric_history(run_id, key)
        by_step = {int(m.step): float(m.value) for m in history}
        return sorted(by_step.items())

    def epochs_logged(self, run_id: str) -> int:
        """The last epoch whose metrics a run holds (0: none)."""
        return max((step for step, _ in self.history(run_id, "train_loss")), default=0)

    # ---- artifacts ----------------------------------------------------------------------

    def text(self, run_id: str, name: str) -> str | None:
        """A text artifact of the run; None where it has none."""
        from mlflow.exceptions import MlflowException

        with tempfile.TemporaryDirectory() as tmp:
            try:
                return Path(self._client.download_artifacts(run_id, name, tmp)).read_text()
            except (MlflowException, OSError):
                return None

    def _losses(self, run_id: str) -> np.ndarray | None:
        """The cell's loss at every step (None: a cell that did not finish has none)."""
        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = self._client.download_artifacts(run_id, STEP_LOSSES, tmp)
                return np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)[:, 1]
            except Exception:  # a failed cell has none: its outcome says so
                return None

    def _stage_spec(self, run: RecordedRun, stage: str) -> tuple[str | None, StageSpec | None]:
        """The stage file the cell trained from (its artifact), parsed with the epochs it ran;
        (None, None) for a cell that never got one, (text, None) for one that does not parse."""
        try:
            text = self.text(run.run_id, f"{stage}.toml")
        except Exception:  # a store that failed here: the report goes on without it
            text = None
        if text is None:
            return None, None
        try:
            spec = parse_stage(text, f"run {run.run_id}'s {stage}.toml")
        except Exception:  # no expectation shown
            return text, None
        epochs = run.params.get("training.epochs")
        return text, with_epochs(spec, int(epochs)) if epochs and epochs.isdigit() else spec

    def parent_artifacts(self, run_id: str) -> tuple[dict[str, str], dict[str, bytes]]:
        """The parent's own top-level text and PNG artifacts (perf_table.txt,
        parity_curve.png), not those a previous report left there."""
        texts: dict[str, str] = {}
        images: dict[str, bytes] = {}
        wanted = [
            a.path
            for a in self._client.list_artifacts(run_id)
            if not a.is_dir and a.path.endswith(_TEXT_ARTIFACTS + _IMAGE_ARTIFACTS)
        ]
        if not wanted:
            return texts, images
        with tempfile.TemporaryDirectory() as tmp:
            for name in wanted:
                local = Path(self._client.download_artifacts(run_id, name, tmp))
                if name.endswith(_IMAGE_ARTIFACTS):
                    images[name] = local.read_bytes()
                else:
                    texts[name] = local.read_text()
        return texts, images

    # ---- an invocation, for its report --------------------------------------------------

    def invocation(self, run_id: str) -> Invocation:
        """A parent run and its cells, with their histories and stage files; an unknown or
        non-parent run id is a BenchError."""
        run = self.run(
            run_id,
            f"no run {run_id!r} in {self.shown_uri}; give the parent run id that `bench run`,"
            " `perf` or `parity` printed, and its store with --tracking-uri",
        )
        if run.deleted:
            raise BenchError(
                f"run {run_id} in {self.shown_uri} is deleted; restore it with"
                f" `MLFLOW_TRACKING_URI={self.shown_uri} mlflow runs restore --run-id {run_id}`"
            )
        if run.kind not in PARENT_KINDS:
            raise BenchError(
                f"run {run_id} is not an invocation's parent run (kind {run.kind or 'none'!r});"
                f" give the id of a run of kind {', '.join(PARENT_KINDS)} (its cells' tag"
                f" {INVOCATION_TAG})"
            )
        texts, images = self.parent_artifacts(run_id)
        return Invocation(
            run_id=run_id,
            experiment_id=run.experiment_id,
            name=run.name,
            kind=run.kind,
            status=run.status,
            tags=run.tags,
            params=run.params,
            metrics=run.metrics,
            cells=self.cells(run, histories=EPOCH_METRICS, stage_files=True),
            tracking_uri=self.shown_uri,
            texts=texts,
            images=images,
        )
