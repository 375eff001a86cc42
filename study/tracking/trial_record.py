"""A trial's folder under runs/trials/ and what it records: its key (the resolved configuration), the
MLflow run of an interrupted attempt (resumed, not duplicated), and DONE with the final figures."""
from __future__ import annotations

import fcntl
import hashlib
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import mlflow

from study.runtime import progress
from study.config import Config, identity
from study.durable import replace_durably
from study.tracking.code_identity import LOADED_PACKAGE_HASH
from study.tracking.mlflow_runs import run_status


LOCK_POLL_SECONDS = 1.0


@dataclass
class TrialResult:
    run_id: str
    metrics: dict[str, float]


def trial_key(cfg: Config) -> str:
    """Same resolved configuration and same code -> same key -> same checkpoint folder (resume after a
    crash), whatever the device or thread count it resumes on. An edit to any file of the study package
    (a method, the trial, the evaluation, not only the dense recipe) gives a new key: a DONE folder of
    the old code is not reused (the code a worker loaded: see LOADED_PACKAGE_HASH)."""
    tree = {"config": identity(cfg), "package": LOADED_PACKAGE_HASH}
    return hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()[:16]


def trial_dir(cfg: Config, runs_dir: Path) -> Path:
    return Path(runs_dir) / "trials" / cfg.tracking.experiment / trial_key(cfg)


@contextmanager
def trial_lock(folder: Path) -> Iterator[None]:
    """Held while a process runs the trial in `folder`. Another process that starts the same trial (two
    magnitude trials whose dense source is not trained yet) waits here, then finds it finished, instead
    of training it beside the first into the same checkpoint. An exclusive flock: the system lets go of
    it when its holder dies, so a killed trial never blocks its resumption."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f"{folder.name}.lock", "w") as handle:
        waiting = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waiting:
                    print(f"trial {folder.name} is running in another process: waiting for it", flush=True)
                    waiting = True
                progress.beat()  # waiting on another trial is not a hang
                time.sleep(LOCK_POLL_SECONDS)
        yield


def finished_result(folder: Path, tracking_uri: str) -> TrialResult | None:
    """The result of a trial whose folder says DONE and whose run is in this store. DONE is written once
    every metric and artifact is logged, before the run is ended: a run a kill left open in between is
    closed FINISHED here, not trained again."""
    done = folder / "DONE"
    if not done.is_file():
        return None
    record = json.loads(done.read_text())
    status = run_status(record["run_id"], tracking_uri)
    if status is None:
        return None
    if status != "FINISHED":
        mlflow.MlflowClient(tracking_uri).set_terminated(record["run_id"], "FINISHED")
        print(f"trial {folder.name}: closed its finished MLflow run {record['run_id']} (left {status})")
    else:
        print(f"trial {folder.name} already finished (MLflow run {record['run_id']})")
    return TrialResult(record["run_id"], record["metrics"])


def record_done(folder: Path, result: TrialResult) -> None:
    """DONE written whole or not at all (a temporary file renamed into place): a full disk or a kill
    leaves no empty or torn DONE behind."""
    record = json.dumps({"run_id": result.run_id, "metrics": result.metrics})
    replace_durably(folder / "DONE", lambda tmp: tmp.write_text(record))


def recorded_run(folder: Path) -> str | None:
    """The MLflow run that the trial in `folder` last ran in, if it ran on this machine (or a shared runs/)."""
    run_id_file = Path(folder) / "mlflow_run_id"
    return run_id_file.read_text().strip() if run_id_file.is_file() else None


def unfinished_run(folder: Path, tracking_uri: str) -> str | None:
    """The run of an interrupted attempt at this trial, to resume rather than duplicate."""
    run_id = recorded_run(folder)
    return run_id if run_id and run_status(run_id, tracking_uri) not in (None, "FINISHED") else None


def record_run(folder: Path, run_id: str) -> None:
    (folder / "mlflow_run_id").write_text(run_id)
