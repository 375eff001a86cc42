"""Lost trials have one owner (study/sweep/recovery.py) and a launch ends with the invariant checked
(study/sweep/launch_check.py): the answers an outage loses, Optuna's own stale check and a point that
nobody runs are each found, settled and named, on a real RDB storage (SQLite file) and MLflow store."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pytest
from optuna.storages import RDBStorage
from optuna.trial import TrialState, create_trial
from sqlalchemy.exc import OperationalError

from study.sweep import optuna_storage, timing
from study.sweep.experiment_file import load_experiment
from study.sweep.launch_check import check_launch
from study.sweep.optuna_storage import LAUNCH_FIRST_TRIAL, create_studies, open_storage, point_of
from study.sweep.recovery import pending, reconcile, searched
from study.sweep.storage_retry import with_retries
from tests.helpers import FOUR_POINTS, write_experiment

STALE = 2.0  # seconds: lost trials play out quickly (SQLite stamps heartbeats to the second)


@pytest.fixture(autouse=True)
def quick_staleness(monkeypatch):
    monkeypatch.setattr(optuna_storage, "STALE_SECONDS", STALE)


def commits_then_drops(method: str, when=lambda *args, **kwargs: True) -> type:
    """An RDB storage whose first `method` call (matching `when`) commits, then loses its answer, as a
    connection dropped after the commit does; retried like the sweep's storage."""
    def call(self, *args, **kwargs):
        result = getattr(RDBStorage, method)(self, *args, **kwargs)
        if not self.dropped and when(*args, **kwargs):
            self.dropped = True
            raise OperationalError("commit", {}, ConnectionResetError("connection reset after the commit"))
        return result
    faulty = type("CommitsThenDrops", (RDBStorage,), {method: call, "dropped": False})
    return with_retries(faulty, delays=(0,))


def rdb(tmp_path: Path, storage_class: type = RDBStorage) -> RDBStorage:
    return storage_class(f"sqlite:///{tmp_path / 'optuna.db'}", heartbeat_interval=60, grace_period=STALE)


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", ""])
    proc.wait()
    return proc.pid


def ask_as_a_worker(study: optuna.Study, host_pid: str = "elsewhere:1") -> optuna.Trial:
    """What a worker does at once with a trial it took: records itself and starts beating."""
    trial = study.ask()
    trial.set_user_attr("worker", host_pid)
    study._storage.record_heartbeat(trial._trial_id)
    return trial


def test_a_pop_whose_answer_was_lost_is_settled_and_its_point_queued_again(tmp_path):
    """WAITING -> RUNNING committed, the answer lost: the retry finds the trial RUNNING and Optuna pops the
    next one. The first stays RUNNING with its point and no owner; it used to settle the point for good."""
    popping = lambda trial_id, state, values=None: state == TrialState.RUNNING  # noqa: E731
    study = optuna.create_study(storage=rdb(tmp_path, commits_then_drops("set_trial_state_values", popping)))
    for key in ("p1", "p2"):
        study.enqueue_trial({}, user_attrs={"point": key})
    taken = ask_as_a_worker(study)
    assert point_of(study.trials[taken.number]) == "p2"  # p1's pop was lost
    orphan = study.trials[0]
    assert orphan.state == TrialState.RUNNING and point_of(orphan) == "p1"
    assert pending(study, ["p1", "p2"], first=0) == []  # looks taken while nobody runs it

    time.sleep(STALE + 0.2)
    study._storage.record_heartbeat(taken._trial_id)  # p2's worker is alive
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert reconcile(study, {"p1", "p2"}, tmp_path, client) == 1
    settled = study.trials[0]
    assert settled.state == TrialState.FAIL and "nobody took it up" in settled.user_attrs["failure_reason"]
    assert study.trials[taken.number].state == TrialState.RUNNING  # the live one is left alone
    assert pending(study, ["p1", "p2"], first=0) == ["p1"]
    requeued = [t for t in study.trials if t.state == TrialState.WAITING]
    assert [point_of(t) for t in requeued] == ["p1"]
    assert reconcile(study, {"p1", "p2"}, tmp_path, client) == 0  # queued once, however often it runs


def test_a_creation_whose_answer_was_lost_leaves_an_orphan_that_is_set_aside_not_failed(tmp_path):
    """The insert committed, the answer lost, the retry inserted a second trial: the first is RUNNING with
    no point, no worker and no heartbeat, forever. It is marked PRUNED (nothing to rerun), not a failure."""
    study = optuna.create_study(storage=rdb(tmp_path, commits_then_drops("_create_new_trial")))
    live = ask_as_a_worker(study)
    orphan = next(t for t in study.trials if t.number != live.number)
    assert orphan.state == TrialState.RUNNING and not orphan.user_attrs

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    reconcile(study, None, tmp_path, client)
    assert study.trials[orphan.number].state == TrialState.RUNNING  # not yet: its creator may still be retrying
    time.sleep(STALE + 0.2)
    study._storage.record_heartbeat(live._trial_id)
    assert reconcile(study, None, tmp_path, client) == 0
    assert study.trials[orphan.number].state == TrialState.PRUNED
    assert "never taken up" in study.trials[orphan.number].user_attrs["skipped"]
    assert study.trials[live.number].state == TrialState.RUNNING


def test_a_trial_failed_by_optunas_own_stale_check_has_its_run_closed_and_its_point_queued(tmp_path):
    """Optuna fails stale trials before every `ask`, with no reason, no MLflow and no requeue."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    run = client.create_run(client.create_experiment("e"))
    study = optuna.create_study(storage=rdb(tmp_path))
    trial = ask_as_a_worker(study)
    for name, value in (("point", "p1"), ("mlflow_run_id", run.info.run_id)):
        trial.set_user_attr(name, value)
    time.sleep(STALE + 1.5)
    optuna.storages.fail_stale_trials(study)  # what the next worker's ask runs first
    assert study.trials[0].state == TrialState.FAIL and "failure_reason" not in study.trials[0].user_attrs

    assert reconcile(study, {"p1"}, tmp_path, client) == 1
    assert client.get_run(run.info.run_id).info.status == "FAILED"
    assert [point_of(t) for t in study.trials if t.state == TrialState.WAITING] == ["p1"]


def test_a_trial_that_raised_is_not_retried_within_its_launch_but_at_the_next(tmp_path):
    study = optuna.create_study(storage=rdb(tmp_path))
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"point": "p1", "failure_reason": "BudgetError"}))
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert reconcile(study, {"p1"}, tmp_path, client) == 0
    assert pending(study, ["p1"], first=0) == [] and pending(study, ["p1"], first=1) == ["p1"]
    assert reconcile(study, {"p1"}, tmp_path, client, launch_start=True) == 1


def test_a_lost_search_trial_has_its_run_closed_and_does_not_count_toward_the_budget(tmp_path):
    """A search trial has no point: lost, it is a failure of its worker (not an orphan), its run is closed,
    and the search draws another trial in its place."""
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.create_run(client.create_experiment("e"))
    study = optuna.create_study(storage=rdb(tmp_path))
    study.add_trial(create_trial(state=TrialState.COMPLETE, value=0.1))
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"failure_reason": "BudgetError"}))
    lost = ask_as_a_worker(study, host_pid=f"{socket.gethostname()}:{dead_pid()}")  # its worker is gone
    lost.set_user_attr("mlflow_run_id", run.info.run_id)
    assert searched(study) == 3
    reconcile(study, None, tmp_path, client)
    assert study.trials[lost.number].state == TrialState.FAIL and study.trials[lost.number].user_attrs["lost"]
    assert client.get_run(run.info.run_id).info.status == "FAILED"
    assert searched(study) == 2


def test_the_timing_rule_refuses_a_grace_shorter_than_an_outage_the_retries_ride_through(monkeypatch):
    """With the old 120 s grace and 180 s of retries, the first process back after a 100 s outage
    failed every live trial."""
    import importlib
    assert timing.STALE_SECONDS > timing.RETRY_SECONDS + max(timing.RETRY_DELAYS) + 2 * timing.HEARTBEAT_SECONDS
    assert sum(timing.RETRY_DELAYS) == pytest.approx(timing.RETRY_SECONDS)
    monkeypatch.setenv("SWEEP_STALE_SECONDS", "120")
    with pytest.raises(ValueError, match="SWEEP_STALE_SECONDS=120 would call live trials lost"):
        importlib.reload(timing)
    monkeypatch.setenv("SWEEP_STALE_SECONDS", "soon")
    with pytest.raises(ValueError, match="SWEEP_STALE_SECONDS='soon'"):
        importlib.reload(timing)
    monkeypatch.delenv("SWEEP_STALE_SECONDS")
    importlib.reload(timing)


def test_the_launch_check_names_every_point_not_finished_once(tmp_path, corpus_cache):
    """Finished once: fine. Never run, left RUNNING by nobody, trained twice, finished without its run, a
    child run left RUNNING: each named."""
    experiment = load_experiment(write_experiment(tmp_path, corpus_cache, FOUR_POINTS))
    keys = [p.key for p in experiment.points()]
    study = create_studies(open_storage(None, experiment.name, tmp_path), experiment.name)[0]
    study.set_user_attr(LAUNCH_FIRST_TRIAL, 0)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    parent = client.create_run(client.create_experiment(experiment.name)).info.run_id

    def finished_run(key: str, status: str = "FINISHED") -> None:
        run = client.create_run(client.get_experiment_by_name(experiment.name).experiment_id, tags={
            "grid_point": key, "optuna.study_name": study.study_name, "mlflow.parentRunId": parent})
        if status != "RUNNING":
            client.set_terminated(run.info.run_id, status)

    def complete(key: str) -> None:
        study.add_trial(create_trial(values=[0.1, 100], user_attrs={"point": key, "run_name": f"run-{keys.index(key)}"}))

    for key in keys:
        complete(key)
        finished_run(key)
    assert check_launch(experiment, [study], uri, parent) == []

    complete(keys[0])  # trained twice
    finished_run(keys[1])  # a second FINISHED run for one COMPLETE trial
    finished_run(keys[2], "RUNNING")
    study.enqueue_trial({}, user_attrs={"point": keys[3]})
    study.ask()  # popped by nobody: RUNNING, no worker
    problems = check_launch(experiment, [study], uri, parent)
    assert any("run-0: 2 COMPLETE trials" in p for p in problems), problems
    assert any("run-1: 2 FINISHED MLflow runs" in p for p in problems), problems
    assert any("is still RUNNING (run-3" in p or "taken up by nobody" in p for p in problems), problems
    assert sum("MLflow run" in p and "still RUNNING" in p for p in problems) == 1, problems
    fresh = create_studies(open_storage(None, "other", tmp_path / "other"), "other")[0]
    missing = check_launch(experiment, [fresh], uri, parent)
    assert sum("never run, not finished" in p for p in missing) == len(keys), missing
    assert json.loads(keys[0])["arm"] == "dense"


def test_a_point_whose_run_finished_but_whose_trial_did_not_is_not_trained_again(tmp_path, corpus_cache):
    """The run FINISHED, then the tell was lost (a signal, an outage, a crash): the trial is FAIL and its point
    requeued. The requeue, on any machine, used to train the point again: two FINISHED runs for one point."""
    from study.sweep.worker import REPORTED, Worker, WorkerSettings, grid_sampler
    exp = write_experiment(tmp_path, corpus_cache, FOUR_POINTS)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    worker = Worker(WorkerSettings(str(exp), {}, None, uri, str(tmp_path / "runs")))
    points = worker.experiment.points()
    study = create_studies(worker.storage, worker.experiment.name)[0]
    client = mlflow.MlflowClient(uri)
    parent = client.create_run(client.create_experiment(worker.experiment.name)).info.run_id
    study.set_user_attr("parent_run_id", parent)
    finished = client.create_run(client.get_experiment_by_name(worker.experiment.name).experiment_id, tags={
        "grid_point": points[0].key, "optuna.study_name": study.study_name, "mlflow.parentRunId": parent})
    for i, name in enumerate(REPORTED):
        client.log_metric(finished.info.run_id, name, 0.25 + i)
    client.set_terminated(finished.info.run_id, "FINISHED")
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"point": points[0].key}))  # its tell lost
    study.enqueue_trial({}, user_attrs={"point": points[0].key})

    grid = worker.load(study.study_name, grid_sampler(points))
    grid.optimize(worker.objective(grid, points), n_trials=1)
    done = grid.trials[-1]
    assert done.state == TrialState.COMPLETE and done.user_attrs["mlflow_run_id"] == finished.info.run_id
    assert done.values == [0.25, 0.25 + REPORTED.index("params/total")]
    assert len(client.search_runs([client.get_experiment_by_name(worker.experiment.name).experiment_id])) == 2
    assert not (tmp_path / "runs" / "trials").exists()  # nothing trained
