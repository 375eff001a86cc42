"""MLflow plumbing: where the store is, and how a run records its configuration and results."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import mlflow

from study.config import Config, flatten, to_dict

DEFAULT_STORE = Path("runs") / "mlflow.db"


def resolve_tracking_uri(cli_uri: str | None = None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else a SQLite file under ./runs (absolute URI)."""
    uri = cli_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    path = DEFAULT_STORE.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def code_version() -> str:
    """The git commit of the code, with '+dirty' when the tree has changes; 'unknown' outside git."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def run_params(cfg: Config) -> dict[str, str]:
    """Every resolved configuration key, flattened, plus the method and the code version."""
    params = {key: str(value) for key, value in flatten(to_dict(cfg)).items()}
    params["code_version"] = code_version()
    return params


def start_run(tracking_uri: str, cfg: Config, run_id: str | None = None) -> mlflow.ActiveRun:
    """Starts (or, with run_id, resumes) the MLflow run of one trial."""
    mlflow.set_tracking_uri(tracking_uri)
    if run_id is not None:
        return mlflow.start_run(run_id=run_id)
    mlflow.set_experiment(cfg.tracking.experiment)
    run = mlflow.start_run(run_name=cfg.tracking.run_name or None)
    mlflow.log_params(run_params(cfg))
    mlflow.set_tags({"method": cfg.method, "seed": str(cfg.train.seed)})
    return run
