"""Where the MLflow store is, the experiments the harness creates in it (artifacts under runs/, opening
on the runs table in the UI), and the UI address of a sweep's runs. No torch: analysis/ uses it too."""
from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from urllib.parse import quote, urlparse

import mlflow
from sqlalchemy import event
from sqlalchemy.engine import Engine

DEFAULT_STORE = Path("runs") / "mlflow.db"
DEFAULT_ARTIFACTS = Path("runs") / "artifacts"
UI_ADDRESS = "http://127.0.0.1:5000"  # where `mlflow ui` listens by default
# MLflow 3.17's experiment page opens on its GenAI overview ("Traces 0, no data") while the UI's
# global "GenAI | Model training" switch is on GenAI, its default; the URL parameter sets the switch.
# The experiment-kind tag is what MLflow's own kind selector writes; in 3.17 the switch wins over it.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
UI_WORKFLOW = "workflowType=machine_learning"
# A sweep's processes (driver, workers) write one SQLite store. On a busy machine a writer descheduled
# mid-transaction holds the lock for seconds, past sqlite3's 5 s wait, and the others failed with
# "database is locked" (seen on a 2-core machine running three workers beside other work).
SQLITE_BUSY_SECONDS = 120


@event.listens_for(Engine, "connect")
def _patient_sqlite(dbapi_connection, connection_record) -> None:
    """Each SQLite connection of this process (the MLflow store, an Optuna SQLite storage) waits up to
    SQLITE_BUSY_SECONDS for another process's lock instead of failing after 5 s."""
    if isinstance(dbapi_connection, sqlite3.Connection):
        dbapi_connection.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_SECONDS * 1000}")


def resolve_tracking_uri(cli_uri: str | None = None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else a SQLite file under ./runs (absolute URI)."""
    uri = cli_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    path = DEFAULT_STORE.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def is_server(tracking_uri: str) -> bool:
    return urlparse(tracking_uri).scheme in ("http", "https")


def artifact_location(tracking_uri: str) -> str | None:
    """Artifacts beside a SQLite store (runs/artifacts for the default one), else under ./runs;
    a tracking server keeps its own artifact store (None)."""
    if is_server(tracking_uri):
        return None
    if tracking_uri.startswith("sqlite:///"):
        folder = Path(tracking_uri.removeprefix("sqlite:///")).resolve().parent / "artifacts"
    else:
        folder = DEFAULT_ARTIFACTS.resolve()
    return folder.as_uri()


def ensure_experiment(tracking_uri: str, name: str) -> str:
    """The id of experiment `name`, created when missing with its artifacts under runs/ and tagged as
    model training; also makes it the active experiment of this process."""
    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            experiment_id = client.create_experiment(name, artifact_location=artifact_location(tracking_uri),
                                                     tags=EXPERIMENT_KIND)
        except mlflow.exceptions.MlflowException:  # another worker created it first
            experiment_id = client.get_experiment_by_name(name).experiment_id
    else:
        experiment_id = experiment.experiment_id
        if experiment.tags.get("mlflow.experimentKind") is None:
            client.set_experiment_tag(experiment_id, *next(iter(EXPERIMENT_KIND.items())))
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def runs_url(tracking_uri: str, experiment_id: str, parent_run_id: str | None = None) -> str:
    """The UI address of an experiment's runs table (the server's own address for a tracking server,
    else where `mlflow ui` listens by default); with a parent run, filtered to its trials."""
    base = tracking_uri.rstrip("/") if is_server(tracking_uri) else UI_ADDRESS
    query = UI_WORKFLOW
    if parent_run_id:
        query += "&searchFilter=" + quote(f"tags.`mlflow.parentRunId` = '{parent_run_id}'", safe="")
    return f"{base}/#/experiments/{experiment_id}/runs?{query}"


def ui_command(tracking_uri: str) -> str:
    """The command that serves the UI for this store (nothing to start for a tracking server)."""
    if is_server(tracking_uri):
        return ""
    return f"mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000"
