"""Lost trials (a worker killed, hung or preempted elsewhere) marked FAIL, their MLflow runs closed, and
their points queued again so that a live worker resumes them from their checkpoints: the driver does
it every REQUEUE_SECONDS, and cluster workers with no driver beside them do it while they wait."""
from __future__ import annotations

from pathlib import Path

import mlflow
import optuna
from optuna.trial import TrialState

from study.sweep.optuna_storage import fail_stale_trials, point_of
from study.tracking.mlflow_runs import close_run, run_status
from study.tracking.trial_record import recorded_run

REQUEUE_SECONDS = 30  # how often the driver, or a driverless worker while it waits, looks for lost trials


def mark_lost_runs(lost: list[optuna.trial.FrozenTrial], client: mlflow.MlflowClient) -> None:
    """The MLflow run of a lost trial (which its worker recorded on the trial, wherever it ran) is closed as
    FAILED; its rerun resumes it."""
    for trial in lost:  # a distributed trial's run is known only to its folder
        run_id = trial.user_attrs.get("mlflow_run_id") or recorded_run(trial.user_attrs.get("trial_dir", "/nonexistent"))
        if run_id and run_status(run_id, client.tracking_uri) == "RUNNING":
            close_run(client, run_id, "worker lost (stale trial); rerun resumes this run")


def enqueue_retries(study: optuna.Study, keys: set[str] | None, only: set[str] | None = None) -> int:
    """Points whose every attempt failed are queued again (the grid sampler counts a failed point as
    visited and would never draw it again): at a launch's start every such point of the current grid
    (`keys`, if known), during the launch only the points of trials just found lost (`only`)."""
    by_point: dict[str, list[TrialState]] = {}
    for t in study.get_trials(deepcopy=False):
        by_point.setdefault(point_of(t), []).append(t.state)
    retries = [k for k, states in by_point.items() if k is not None and (keys is None or k in keys)
               and (only is None or k in only) and TrialState.FAIL in states
               and not {TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING} & set(states)]
    for key in retries:  # the worker reads the point from the user attribute
        study.enqueue_trial({}, user_attrs={"point": key}, skip_if_exists=False)
    return len(retries)


def requeue_lost(studies: list[optuna.Study], grid: set[str], runs_dir: Path, client: mlflow.MlflowClient,
                 launch_start: bool = False) -> int:
    """Lost trials marked FAIL (their MLflow runs FAILED) and their points queued again, so a live worker
    resumes them in this launch; at the launch's start every failed point is queued. The first study's
    points are the grid, the matched study's are known only later. Returns the points queued."""
    return sum(requeue_lost_in(study, keys, runs_dir, client, launch_start) for study, keys in zip(studies, (grid, None)))


def requeue_lost_in(study: optuna.Study, keys: set[str] | None, runs_dir: Path, client: mlflow.MlflowClient,
                    launch_start: bool = False) -> int:
    lost = fail_stale_trials(study, runs_dir)
    mark_lost_runs(lost, client)
    return enqueue_retries(study, keys, None if launch_start else {point_of(t) for t in lost})
