"""The sweep's MLflow parent run: the one a killed driver left open, closed by the next launch, and at
each launch's end its last figures (the counts below) and its status."""
from __future__ import annotations

import mlflow
import optuna
from optuna.trial import TrialState

from study.sweep.optuna_storage import LAUNCH_FIRST_TRIAL, point_of
from study.tracking.mlflow_runs import close_run, run_status
from study.names import TAG_FAILURE_REASON


def close_previous_parent(study: optuna.Study, client: mlflow.MlflowClient) -> None:
    """A driver that was killed left its parent run RUNNING; this launch takes over."""
    previous = study.user_attrs.get("parent_run_id")
    if previous and run_status(previous, client.tracking_uri) == "RUNNING":
        close_run(client, previous, "sweep driver lost; a later launch continued the sweep")


def close_launch(client: mlflow.MlflowClient, parent: str, done: int | None, failed: int | None, restarts: int,
                 reason: str = "", interrupted: bool = False) -> None:
    """The parent run's last figures, and its end: KILLED (interrupted), FAILED (with the reason) or FINISHED."""
    if done is not None:
        client.log_metric(parent, "sweep/finished_trials", done)
        client.log_metric(parent, "sweep/failed_trials", failed)
    client.log_metric(parent, "sweep/worker_restarts", restarts)
    if reason:
        client.set_tag(parent, TAG_FAILURE_REASON, f"{reason}; rerun the command to continue")
    client.set_terminated(parent, status="KILLED" if interrupted else "FAILED" if reason else "FINISHED")


def launch_counts(studies: list[optuna.Study]) -> tuple[int, int]:
    """(finished trials, points that failed in this launch) over the sweep's studies."""
    done = sum(len(s.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) for s in studies)
    return done, sum(failed_in_launch(s) for s in studies)


def failed_in_launch(study: optuna.Study) -> int:
    """Points whose trial failed in this launch and that no later trial finished (a lost worker's
    trial, resumed by its replacement, is not a failure)."""
    first = study.user_attrs[LAUNCH_FIRST_TRIAL]
    trials = study.get_trials(deepcopy=False)
    key = lambda t: point_of(t) or f"search trial {t.number}"  # noqa: E731 (search trials have no point)
    finished = {key(t) for t in trials if t.state == TrialState.COMPLETE}
    return len({key(t) for t in trials if t.state == TrialState.FAIL and t.number >= first and key(t) not in finished})
