"""MLflow: one MLflow run per cxraug run (per model of a per-label GAN run), in a local store or a server.

Written through ``mlflow.tracking.MlflowClient`` (``mlflow-skinny`` is enough). The default store
is a SQLite database inside the workspace, ``WORKSPACE/mlruns/mlflow.db`` with artifacts in
``WORKSPACE/mlruns/artifacts``: MLflow 3 puts its file store (``./mlruns``) in maintenance mode
and refuses it unless ``MLFLOW_ALLOW_FILE_STORE=true`` (mlflow/store/tracking/file_store.py),
while its SQLAlchemy store needs ``sqlalchemy`` and ``alembic`` (mlflow/store/db/utils.py). Any
other tracking URI (``http://host:5000``, ``sqlite:///PATH``, ``databricks``) is used as given.
The run id is kept in ``RUN/mlflow.json``, so a resumed run continues the same MLflow run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from cxraug import hookimpl
from cxraug.errors import OptionsError
from cxraug.fileio import atomic_write
from cxraug.interfaces import Logger, LoggerRun, PluginOptions

TRACKERS_HINT = 'pip install "cxraug[trackers]"'
STATE_FILE = "mlflow.json"
#: MLflow's limits (mlflow/utils/validation.py): parameter value length, entries per log_batch.
MAX_PARAM_VALUE = 6000
MAX_PARAMS_PER_BATCH = 100
_STATUS = {"finished": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
#: URI schemes served by MLflow's SQLAlchemy store (mlflow/store/db/db_types.py).
_DATABASES = ("sqlite", "mysql", "postgresql", "mssql")


class MLflowOptions(PluginOptions):
    """Options of the ``mlflow`` logger."""

    tracking_uri: str = Field(
        "",
        description="Tracking store or server, e.g. http://host:5000 or sqlite:///PATH/mlflow.db "
        "(default: sqlite:///WORKSPACE/mlruns/mlflow.db).",
    )
    experiment: str = Field("cxraug", min_length=1, max_length=500, description="MLflow experiment name.")


class MLflowLogger(Logger[MLflowOptions]):
    """Scalars as metrics, sample grids as step images and the resolved options as params, in MLflow.

    A resumed run continues the MLflow run whose id ``RUN/mlflow.json`` holds; rows it logs again
    (after the step it went back to) are added to the metric history at the same steps.
    """

    name: ClassVar[str] = "mlflow"
    description: ClassVar[str] = "MLflow runs in WORKSPACE/mlruns/mlflow.db or a tracking server"
    Options: ClassVar[type[MLflowOptions]] = MLflowOptions
    requires: ClassVar[tuple[str, ...]] = ("mlflow",)
    install_hint: ClassVar[str] = TRACKERS_HINT

    _client: Any = None
    _run_id: str = ""

    @classmethod
    def check_available(cls, options: PluginOptions) -> None:
        super().check_available(options)
        uri = str(getattr(options, "tracking_uri", ""))
        scheme = uri.partition(":")[0].partition("+")[0] if ":" in uri else ""
        if not uri or scheme in _DATABASES:
            import importlib.util

            missing = [m for m in ("sqlalchemy", "alembic") if importlib.util.find_spec(m) is None]
            if missing:
                where = f"tracking URI {uri!r}" if uri else "default SQLite store"
                raise OptionsError(
                    f"--logger mlflow: the {where} needs {', '.join(missing)}, which is not installed: "
                    f"{TRACKERS_HINT}"
                )

    def start(self, run: LoggerRun) -> None:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        uri, artifacts = self._store(run)
        try:
            # MLflow's SQLAlchemy store trips SQLAlchemy 2.1's deprecation of `noload`; not ours to fix.
            with warnings.catch_warnings(), _store_setup_quiet():
                warnings.simplefilter("ignore", DeprecationWarning)
                client = MlflowClient(tracking_uri=uri)
                run_id = self._continue(client, run, uri)
            if run_id is None:
                with _store_setup_quiet():
                    experiment_id = self._experiment(client, artifacts)
                tags = {"cxraug.kind": run.kind, "cxraug.folder": str(run.folder)}
                run_id = client.create_run(experiment_id, run_name=run.name, tags=tags).info.run_id
                state = {"tracking_uri": uri, "experiment_id": experiment_id, "run_id": run_id}
                text = json.dumps(state, indent=2) + "\n"
                atomic_write(run.folder / STATE_FILE, lambda f: f.write(text.encode("utf-8")))
        except MlflowException as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise OptionsError(f"--logger mlflow: tracking store {uri!r}: {first}") from None
        self._client, self._run_id = client, run_id

    def _store(self, run: LoggerRun) -> tuple[str, str | None]:
        """The tracking URI and, for the default store, where its artifacts go."""
        if self.options.tracking_uri:
            return self.options.tracking_uri, None
        base = (run.workspace or run.folder) / "mlruns"
        base.mkdir(parents=True, exist_ok=True)
        database = "sqlite:///" + (base / "mlflow.db").resolve().as_posix()
        return database, (base / "artifacts").resolve().as_uri()

    def _continue(self, client: Any, run: LoggerRun, uri: str) -> str | None:
        """The run id recorded by an earlier start of this stream in the same store, if it is there."""
        from mlflow.exceptions import MlflowException

        path = run.folder / STATE_FILE
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(state, dict) or state.get("tracking_uri") != uri or not state.get("run_id"):
            return None
        try:
            client.update_run(str(state["run_id"]), status="RUNNING")
        except MlflowException:  # the store was replaced or the run deleted: start a new one
            return None
        return str(state["run_id"])

    def _experiment(self, client: Any, artifacts: str | None) -> str:
        from mlflow.exceptions import MlflowException

        name = self.options.experiment
        found = client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        try:
            return str(client.create_experiment(name, artifact_location=artifacts))
        except MlflowException:  # another process created it since
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
            return str(found.experiment_id)

    def log_params(self, params: dict[str, str | int | float | bool]) -> None:
        from mlflow.entities import Param

        logged = self._client.get_run(self._run_id).data.params
        new = []
        for key, value in params.items():
            text = str(value)[:MAX_PARAM_VALUE]
            if key not in logged:
                new.append(Param(key, text))
            elif logged[key] != text:  # params are immutable in MLflow; a resume's change is a tag
                self._client.set_tag(self._run_id, f"resumed.{key}", text)
        for i in range(0, len(new), MAX_PARAMS_PER_BATCH):
            self._client.log_batch(self._run_id, params=new[i : i + MAX_PARAMS_PER_BATCH])

    def log_scalars(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, step) for key, value in values.items()]
        if metrics:
            self._client.log_batch(self._run_id, metrics=metrics)

    def log_image(self, step: int, name: str, image: np.ndarray) -> None:
        self._client.log_image(self._run_id, image, key=name, step=step)

    def close(self, status: str) -> None:
        if self._client is not None:
            self._client.set_terminated(self._run_id, status=_STATUS.get(status, "FINISHED"))
            self._client = None


@contextlib.contextmanager
def _store_setup_quiet() -> Iterator[None]:
    """MLflow logs "Creating initial MLflow database tables..." at INFO through its own handler
    (mlflow/store/db/utils.py, alembic's migrations) when it first creates the SQLite store: store
    housekeeping, not the user's business; warnings and errors still show."""
    loggers = [logging.getLogger(name) for name in ("mlflow.store.db.utils", "alembic")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def state_of(folder: Path) -> dict[str, Any]:
    """What ``RUN/mlflow.json`` records (tracking URI, experiment and run id); {} when absent."""
    path = folder / STATE_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


@hookimpl
def register_loggers(register):
    register(MLflowLogger)
