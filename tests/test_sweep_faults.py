"""What shared machines do to a sweep, against the real services: SIGTERM mid-epoch, a PostgreSQL outage
mid-trial, a relaunch on a machine that does not share runs/. Each checks the end state: every point
FINISHED once, nothing left RUNNING, no point trained twice."""
from __future__ import annotations

import os
import signal
import subprocess
import threading

import optuna
import pytest
import torch
from optuna.trial import TrialState

from tests.services import restartable_postgres
from tests.helpers import (
    ONE_POINT,
    PACED,
    QUICK_TIMING,
    ROOT,
    TWO_POINTS,
    check_grid_ran_once,
    child_runs,
    fill,
    run_sweep,
    small_disk,
    start_sweep,
    sweep_command,
    sweep_storage,
    wait_for_checkpoint,
    worker_pids,
    write_experiment,
)

pytestmark = pytest.mark.slow  # processes started, trials trained end to end







def test_sigterm_checkpoints_the_step_and_the_next_launch_resumes_the_same_run(tmp_path, corpus_cache):
    exp = write_experiment(tmp_path, corpus_cache, ONE_POINT, epochs=6)  # paced: the signal lands while it trains
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = start_sweep(sweep_command(exp, uri), tmp_path, tmp_path / "driver.log", env={**os.environ, **PACED})
    checkpoint = wait_for_checkpoint(tmp_path, proc)
    proc.send_signal(signal.SIGTERM)  # to the driver, which passes it on to its worker
    proc.wait(timeout=60)
    children, parents = child_runs(uri)
    assert [r.info.status for r in children] == ["KILLED"] and [p.info.status for p in parents] == ["KILLED"]
    worker_log = next((tmp_path / "runs/logs/tiny_sweep").glob("worker-*.log")).read_text()
    assert "SIGTERM: checkpointing at the end of this step" in worker_log
    state = torch.load(checkpoint, weights_only=False)
    assert 1 <= state["history"].epoch < 6  # stopped mid-training: at a step, or after an epoch's evaluation

    result = run_sweep(sweep_command(exp, uri), tmp_path)
    assert result.returncode == 0, result.stdout[-2000:]
    children, parents = child_runs(uri)
    assert len(children) == 1 and children[0].info.status == "FINISHED"  # the same run, resumed
    tags = children[0].data.tags
    assert tags["resumed_from_epoch"] == str(state["history"].epoch)
    assert tags.get("resumed_from_step") == (f"{state['partial']['step']} of epoch {state['partial']['epoch'] + 1}"
                                             if state["partial"] else None)


@pytest.mark.postgres
def test_a_postgresql_outage_mid_trial_is_ridden_through_in_the_same_launch(tmp_path, corpus_cache, request):
    """The database is stopped for 8 s while a trial trains: heartbeats, tells and the driver's polls are
    retried, and the launch ends with every point finished once."""
    url, version = restartable_postgres()
    storage = sweep_storage("postgresql", tmp_path, request)
    exp = write_experiment(tmp_path, corpus_cache, TWO_POINTS.replace('grid = { "model.ffn_dim" = [32, 64] }', ""), epochs=4)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    log = tmp_path / "driver.log"
    proc = start_sweep(sweep_command(exp, uri, "--storage", storage), tmp_path, log)
    wait_for_checkpoint(tmp_path, proc)
    cluster = ["pg_ctlcluster", version, "main"]
    subprocess.run([*cluster, "stop"], check=True)
    restart = threading.Timer(8, subprocess.run, args=([*cluster, "start"],), kwargs={"check": True})
    restart.start()
    try:
        proc.wait(timeout=600)
    finally:
        restart.join()
    output = log.read_text()
    assert proc.returncode == 0, output[-3000:]
    assert "retry" in output or "retry" in "".join(p.read_text() for p in (tmp_path / "runs/logs").rglob("*.log"))
    check_grid_ran_once(uri, storage, failing=False, points=2)
    children, parents = child_runs(uri)
    assert len(children) == 2 and [p.info.status for p in parents] == ["FINISHED"]  # none trained twice


@pytest.mark.postgres
def test_a_point_requeued_on_a_machine_without_its_runs_folder_starts_over_and_closes_the_old_run(
        tmp_path, corpus_cache, request):
    """Two machines, one database and one tracking store, separate runs/ folders: the second cannot resume the
    first's checkpoint, says so, closes the first attempt's run and trains the point in a new one."""
    storage = sweep_storage("postgresql", tmp_path, request)
    first, second = tmp_path / "machine-a", tmp_path / "machine-b"
    first.mkdir(), second.mkdir()
    exp = write_experiment(tmp_path, corpus_cache, ONE_POINT, epochs=6)  # paced: the signal lands while it trains
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = start_sweep(sweep_command(exp, uri, "--storage", storage), first, first / "driver.log",
                       env={**os.environ, **PACED})
    wait_for_checkpoint(first, proc)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    (old_run,), _ = child_runs(uri)

    result = run_sweep(sweep_command(exp, uri, "--storage", storage), second)
    assert result.returncode == 0, result.stdout[-2000:]
    worker_log = next((second / "runs/logs/tiny_sweep").glob("worker-*.log")).read_text()
    assert "left its checkpoint in a runs/ folder this machine does not share" in worker_log
    children, _ = child_runs(uri)
    status = {r.info.run_id: r.info.status for r in children}
    assert status.pop(old_run.info.run_id) == "FAILED" and list(status.values()) == ["FINISHED"]
    closed = [r for r in children if r.info.run_id == old_run.info.run_id][0]
    assert closed.data.tags["failure_reason"].startswith("superseded")
    check_grid_ran_once(uri, storage, failing=False, points=1)




@pytest.mark.postgres
def test_answers_lost_after_the_commit_leave_nothing_running_and_no_point_untrained(tmp_path, corpus_cache, request):
    """Each worker's first trial creation and first pop of a queued trial commit, then lose their answer.
    The retries leave a RUNNING trial that nobody owns (one with a point, for the pop); the launch used to
    end FINISHED with them RUNNING and the popped point never trained. Now they are settled once they are
    stale, the point is queued again and trained in the same launch."""
    import os

    import optuna
    from optuna.trial import TrialState, create_trial

    from study.sweep.experiment_file import load_experiment
    from study.sweep.optuna_storage import create_studies
    storage = sweep_storage("postgresql", tmp_path, request)
    exp = write_experiment(tmp_path, corpus_cache, TWO_POINTS.replace('grid = { "model.ffn_dim" = [32, 64] }', ""))
    first_point = load_experiment(exp).points()[0].key
    study = create_studies(optuna.storages.RDBStorage(storage), "tiny_sweep")[0]  # a lost attempt from before:
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"point": first_point}))  # queued at launch
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, **QUICK_TIMING, "SWEEP_TEST_LOST_ANSWERS": "create,pop",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "faults"), os.environ.get("PYTHONPATH", "")])}
    result = run_sweep(sweep_command(exp, uri, "--storage", storage, "--workers", "2"), tmp_path, env=env)
    logs = "".join(p.read_text() for p in (tmp_path / "runs/logs").rglob("*.log"))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:] + logs[-3000:]
    # Each worker loses the answer to its first creation and its first pop; under load one worker may take
    # both points before the other starts, so count what happened: the queued point is popped, the other created
    creations, pops = logs.count("_create_new_trial failed"), logs.count("set_trial_state_values failed")
    assert creations >= 1 and pops >= 1, logs[-3000:]
    check_grid_ran_once(uri, storage, failing=False, points=2)  # nothing RUNNING, each point once
    trials = optuna.load_study(study_name="tiny_sweep", storage=storage).get_trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    orphans = [t for t in trials if "never taken up" in t.user_attrs.get("skipped", "")]
    assert len(orphans) >= creations  # each lost creation, set aside
    popped = [t for t in trials if "nobody took it up" in t.user_attrs.get("failure_reason", "")]
    assert popped and {t.user_attrs["point"] for t in popped} == {first_point}  # once per worker that popped it






def test_a_full_disk_at_the_sigterm_checkpoint_queues_the_point_again_and_loses_nothing(tmp_path, corpus_cache):
    """The disk fills up just before SIGTERM: the stop's checkpoint cannot be written. The half-written file
    is removed, the last good checkpoint stays, the point is queued again, the worker and the driver stop,
    and once there is room the next launch resumes the point and finishes it once."""
    exp = write_experiment(tmp_path, corpus_cache, ONE_POINT, epochs=6)  # stopped after its first epoch
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    storage = sweep_storage("journal", tmp_path, request=None)
    with small_disk(tmp_path / "runs/trials", 32) as disk:
        driver = start_sweep(sweep_command(exp, uri), tmp_path, tmp_path / "driver.log")
        checkpoint = wait_for_checkpoint(tmp_path, driver)
        (worker,) = worker_pids(driver)
        os.kill(worker, signal.SIGSTOP)  # held still while the disk fills: no epoch ends in between
        filler = fill(disk)
        driver.send_signal(signal.SIGTERM)  # passed on to the worker with SIGCONT
        driver.wait(timeout=60)
        worker_log = next((tmp_path / "runs/logs/tiny_sweep").glob("worker-*.log")).read_text()
        assert "No space left on device" in worker_log, worker_log[-3000:]
        assert not list(disk.rglob("*.tmp"))  # the torn write gave its space back
        state = torch.load(checkpoint, weights_only=False)  # the last good checkpoint is whole
        trials = optuna.load_study(study_name="tiny_sweep", storage=storage).get_trials()
        assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]  # stopped, and queued again
        assert trials[1].user_attrs["point"] == trials[0].user_attrs["point"]
        filler.unlink()

        result = run_sweep(sweep_command(exp, uri), tmp_path)
        assert result.returncode == 0, result.stdout[-2000:]
        check_grid_ran_once(uri, storage, failing=False, points=1)
        children, _ = child_runs(uri)
        assert len(children) == 1 and children[0].data.tags["resumed_from_epoch"] == str(state["history"].epoch)
