"""Where each grid point stands, and the one place trials are declared lost.

A trial is lost when nobody runs it any more (optuna_storage.lost_trials says why). `reconcile` is the
only code that acts on it, whoever calls it (the driver at a launch's start and every REQUEUE_SECONDS,
a worker waiting for others, a cluster job with no driver): the trial goes FAIL, marked lost, its MLflow
run is closed FAILED for the rerun to resume, and its point is queued again. Trials that Optuna's own
stale check failed before an `ask` (no reason recorded) are lost too, and settled by the same pass.
Every step is idempotent and decided from the storage's state, so a process that dies halfway through
leaves work that the next pass finishes.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import mlflow
import optuna
from optuna.trial import FrozenTrial, TrialState

from study.sweep.optuna_storage import lost_trials, point_of
from study.tracking.mlflow_runs import close_run, run_status
from study.tracking.trial_record import recorded_run

LOST_ATTR = "lost"  # a trial failed because its worker was lost, not by an error of its own


def is_lost(trial: FrozenTrial) -> bool:
    """A FAIL trial that did not fail by its own error: marked lost here, or failed by Optuna's stale
    check, a signal or a crash (a trial that raised records its `failure_reason` before it fails)."""
    return trial.state == TrialState.FAIL and (LOST_ATTR in trial.user_attrs or "failure_reason" not in trial.user_attrs)


def point_status(trials: list[FrozenTrial]) -> str:
    """One point's standing from its trials: finished, running, queued, lost (its last attempt's worker
    was lost: to be queued again), failed (its last attempt raised), or new (never attempted; yielded
    duplicates do not count)."""
    states = {t.state for t in trials}
    for state, status in ((TrialState.COMPLETE, "finished"), (TrialState.RUNNING, "running"),
                          (TrialState.WAITING, "queued")):
        if state in states:
            return status
    attempts = [t for t in trials if t.state == TrialState.FAIL]
    if not attempts:
        return "new"
    return "lost" if is_lost(max(attempts, key=lambda t: t.number)) else "failed"


def trials_by_point(study: optuna.Study) -> dict[str, list[FrozenTrial]]:
    by_point = defaultdict(list)
    for t in study.get_trials(deepcopy=False):
        key = point_of(t)
        if key is not None:
            by_point[key].append(t)
    return by_point


def pending(study: optuna.Study, keys: list[str], first: int) -> list[str]:
    """Points still to run in this launch: new, queued, lost, or failed only in an earlier launch (trials
    numbered before `first`)."""
    by_point = trials_by_point(study)
    def to_run(key: str) -> bool:
        status = point_status(by_point[key])
        return status in ("new", "queued", "lost") or (
            status == "failed" and max(t.number for t in by_point[key]) < first)
    return [k for k in keys if to_run(k)]


def settle(study: optuna.Study, trial: FrozenTrial, reason: str) -> bool:
    """Marks one lost trial: FAIL with its reason, or PRUNED when nobody ever took it up (no point, no
    worker: a creation whose answer was lost, nothing to rerun). False when another process settled it
    first (the state change is the arbiter: exactly one process's lands)."""
    storage = study._storage
    taken_up = point_of(trial) is not None or "worker" in trial.user_attrs  # a search trial has no point
    try:
        if taken_up:
            storage.set_trial_user_attr(trial._trial_id, LOST_ATTR, True)
            storage.set_trial_user_attr(trial._trial_id, "failure_reason", f"worker lost: {reason}")
        else:
            storage.set_trial_user_attr(trial._trial_id, "skipped", f"orphan trial, never taken up: {reason}")
        return storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL if taken_up else TrialState.PRUNED)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False  # another process got there first, or the trial ended meanwhile


def close_lost_runs(study: optuna.Study, client: mlflow.MlflowClient, first: int) -> int:
    """The MLflow runs of lost trials (from trial `first` on) that are still RUNNING are closed FAILED, unless
    a later attempt already resumed them. A distributed trial's run is known only to its folder."""
    closed, by_point = 0, trials_by_point(study)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if trial.number < first or not is_lost(trial):
            continue
        key = point_of(trial)
        if key is not None and point_status(by_point[key]) in ("running", "finished"):
            continue  # a later attempt resumed the run (or its rerun finished it)
        run_id = trial.user_attrs.get("mlflow_run_id") or recorded_run(trial.user_attrs.get("trial_dir", "/nonexistent"))
        if run_id and run_status(run_id, client.tracking_uri) == "RUNNING":
            close_run(client, run_id, f"{trial.user_attrs.get('failure_reason', 'worker lost')}; " + (
                "the rerun of its point resumes this run" if key is not None else "the search goes on without it"))
            closed += 1
    return closed


def searched(study: optuna.Study) -> int:
    """Trials that count toward a search's budget: those finished, failed by their own error, or running. A
    lost one does not count: its worker died, the search draws another in its place."""
    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.state in (TrialState.COMPLETE, TrialState.RUNNING) or (t.state == TrialState.FAIL and not is_lost(t)))


def enqueue_retries(study: optuna.Study, keys: set[str] | None, launch_start: bool = False) -> int:
    """Queues again each point whose last attempt was lost; at a launch's start also each point whose
    last attempt failed (the grid sampler counts a failed point as visited and would never draw it
    again). `keys`: the grid's points, when known (a point dropped from the grid is left alone)."""
    retry = ("lost", "failed") if launch_start else ("lost",)
    queued = 0
    for key, trials in trials_by_point(study).items():
        if (keys is None or key in keys) and point_status(trials) in retry:
            study.enqueue_trial({}, user_attrs={"point": key}, skip_if_exists=False)  # the worker reads the point
            queued += 1
    return queued


def reconcile(study: optuna.Study, keys: set[str] | None, runs_dir: Path, client: mlflow.MlflowClient,
              launch_start: bool = False) -> int:
    """Lost trials settled, their runs closed and their points queued (at a launch's start, failed points
    too). Returns the points queued."""
    for trial, reason in lost_trials(study, runs_dir):
        settle(study, trial, reason)
    close_lost_runs(study, client, 0 if launch_start else study.user_attrs.get("launch_first_trial", 0))
    return enqueue_retries(study, keys, launch_start)


def reconcile_all(studies: list[optuna.Study], grid: set[str], runs_dir: Path, client: mlflow.MlflowClient,
                  launch_start: bool = False) -> int:
    """`reconcile` over the sweep's studies: the first study's points are the grid, the matched study's are
    known only later."""
    return sum(reconcile(study, keys, runs_dir, client, launch_start) for study, keys in zip(studies, (grid, None)))
