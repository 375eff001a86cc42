"""The launch invariant, checked when a launch ends (and by `--status` once a detached launch's jobs are
gone): every planned point has exactly one COMPLETE trial and exactly one FINISHED MLflow trial run, and
no trial of the sweep, nor any run of this launch, is still RUNNING. Whatever broke on the way (a lost
answer, a worker that died at the wrong moment, a requeue that never came), a launch that reports success
has every row of the results table, each trained once.
"""
from __future__ import annotations

from collections import Counter

import mlflow
import optuna
from optuna.trial import TrialState

from study.sweep.experiment_file import Experiment, FinishedRun
from study.sweep.recovery import point_status, trials_by_point
from study.names import TAG_GRID_POINT, TAG_METHOD

MAX_LISTED = 12  # problems named in the parent run's failure reason (MLflow tags are short)


def search_runs(client: mlflow.MlflowClient, experiment_name: str, filter_string: str) -> list[mlflow.entities.Run]:
    """Every run of the experiment that matches (all pages); none when the experiment does not exist yet."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return []
    runs, token = [], None
    while True:
        page = client.search_runs([experiment.experiment_id], filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def finished_runs(experiment_name: str, study_name: str, tracking_uri: str) -> list[FinishedRun]:
    """The sweep's finished trial runs of one study, read from MLflow: what the matched arms match."""
    runs = search_runs(mlflow.MlflowClient(tracking_uri), experiment_name,
                   f"attributes.status = 'FINISHED' and tags.`optuna.study_name` = '{study_name}'")
    return [FinishedRun(r.data.tags[TAG_METHOD], int(r.data.metrics["params/total"]), r.info.run_id, r.data.params)
            for r in runs]


def planned_points(experiment: Experiment, studies: list[optuna.Study], tracking_uri: str) -> list[list[str]]:
    """Per study, the keys of the points this experiment plans: the grid, then the points the matched arms
    make of the grid's finished runs (none until the grid's runs exist)."""
    grid = [p.key for p in experiment.points()]
    if not any(arm.match for arm in experiment.arms):
        return [grid, []]
    runs = finished_runs(experiment.name, studies[0].study_name, tracking_uri)
    return [grid, [p.key for p in experiment.matched_points(runs)]]


def _label(key: str, trials: list[optuna.trial.FrozenTrial]) -> str:
    names = [t.user_attrs["run_name"] for t in trials if "run_name" in t.user_attrs]
    return names[-1] if names else key


def _point_problem(key: str, trials: list[optuna.trial.FrozenTrial], finished_runs_of_point: int) -> str | None:
    complete = sum(t.state == TrialState.COMPLETE for t in trials)
    if complete == 1 and finished_runs_of_point == 1:
        return None
    label = _label(key, trials)
    if complete > 1:
        return f"{label}: {complete} COMPLETE trials (trained {complete} times)"
    if complete == 1:
        return f"{label}: {finished_runs_of_point} FINISHED MLflow runs (expected 1)"
    status = point_status(trials)
    if status == "failed":
        last = max((t for t in trials if t.state == TrialState.FAIL), key=lambda t: t.number)
        return f"{label}: failed ({last.user_attrs.get('failure_reason', 'see the worker log')[:120]})"
    return f"{label}: {'never run' if status == 'new' else status}, not finished"


def check_launch(experiment: Experiment, studies: list[optuna.Study], tracking_uri: str, parent_run_id: str) -> list[str]:
    """The launch invariant's breaches, one line each (empty: the launch did all it planned)."""
    client = mlflow.MlflowClient(tracking_uri)
    problems = []
    for study in studies:
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            problems.append(f"trial {trial.number} of {study.study_name} is still RUNNING "
                            f"({trial.user_attrs.get('run_name', 'taken up by nobody')}, worker "
                            f"{trial.user_attrs.get('worker', 'none')})")
    if experiment.spec.mode == "search":
        done = len(studies[0].get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        if done < experiment.spec.trials:
            problems.append(f"{done} of the {experiment.spec.trials} search trials finished")
    else:
        for study, keys in zip(studies, planned_points(experiment, studies, tracking_uri)):
            runs = search_runs(client, experiment.name, f"attributes.status = 'FINISHED' and "
                                                    f"tags.`optuna.study_name` = '{study.study_name}'")
            finished = Counter(r.data.tags.get(TAG_GRID_POINT) for r in runs)
            by_point = trials_by_point(study)
            problems += filter(None, (_point_problem(k, by_point.get(k, []), finished[k]) for k in keys))
    for run in search_runs(client, experiment.name, f"attributes.status = 'RUNNING' and "
                                                f"tags.`mlflow.parentRunId` = '{parent_run_id}'"):
        problems.append(f"MLflow run {run.info.run_id} ({run.info.run_name}) is still RUNNING")
    return problems


def summary(problems: list[str]) -> str:
    """The breaches in one line, for the parent run's failure reason and the driver's error."""
    listed = "; ".join(problems[:MAX_LISTED])
    more = f"; and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    return f"{len(problems)} point(s) or run(s) not settled: {listed}{more}"
