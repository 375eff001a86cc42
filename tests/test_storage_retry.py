"""Optuna storage calls ride through an outage: retried with backoff, state changes that already
committed count as done, heartbeats keep beating; and a real PostgreSQL restart mid-trial."""
from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.storages import InMemoryStorage
from optuna.trial import TrialState
from sqlalchemy.exc import OperationalError

from study.sweep.storage_retry import with_retries
from tests.services import restartable_postgres


def outage(calls: int) -> type:
    """An in-memory storage whose every public call fails `calls` times before the service is back."""
    class Flaky(InMemoryStorage):
        failures = {"left": calls}
    def failing(name):
        def call(self, *args, **kwargs):
            if Flaky.failures["left"] > 0:
                Flaky.failures["left"] -= 1
                raise OperationalError("select 1", {}, ConnectionRefusedError("server restarting"))
            return getattr(InMemoryStorage, name)(self, *args, **kwargs)
        return call
    for name in ("get_all_trials", "set_trial_state_values", "set_trial_user_attr"):
        setattr(Flaky, name, failing(name))
    return Flaky


def test_calls_are_retried_through_an_outage_and_logged(capsys):
    flaky = outage(0)
    study = optuna.create_study(storage=with_retries(flaky, delays=(0, 0, 0))())
    trial = study.ask()
    flaky.failures["left"] = 2  # the next two calls fail
    trial.set_user_attr("point", "p")
    assert study.trials[0].user_attrs == {"point": "p"}
    err = capsys.readouterr().err
    assert err.count("storage: set_trial_user_attr failed (OperationalError") == 2 and "retry 2/3" in err


def test_an_outage_longer_than_the_retries_raises():
    flaky = outage(0)
    study = optuna.create_study(storage=with_retries(flaky, delays=(0, 0))())
    flaky.failures["left"] = 5
    with pytest.raises(OperationalError):
        study.get_trials()


def test_a_tell_whose_answer_was_lost_counts_as_done():
    """The first attempt committed, then the connection dropped: the retry finds the trial finished."""
    class CommitsThenDrops(InMemoryStorage):
        dropped = False
        def set_trial_state_values(self, trial_id, state, values=None):
            done = super().set_trial_state_values(trial_id, state, values)
            if not CommitsThenDrops.dropped:
                CommitsThenDrops.dropped = True
                raise OperationalError("commit", {}, ConnectionResetError("connection reset"))
            return done
    study = optuna.create_study(storage=with_retries(CommitsThenDrops, delays=(0,))())
    study.tell(study.ask(), 1.0)
    assert study.trials[0].state == TrialState.COMPLETE and study.trials[0].value == 1.0


def test_file_heartbeat_keeps_beating_after_an_error(tmp_path: Path, monkeypatch, capsys):
    from study.sweep import optuna_storage
    monkeypatch.setattr(optuna_storage, "HEARTBEAT_SECONDS", 0.05)
    beats, real_touch = [], Path.touch
    def flaky_touch(self, *args, **kwargs):
        beats.append(time.time())
        if len(beats) == 2:
            raise OSError("stale NFS file handle")
        real_touch(self, *args, **kwargs)
    monkeypatch.setattr(Path, "touch", flaky_touch)
    with optuna_storage.Heartbeat(tmp_path / "beat"):
        time.sleep(0.5)
    assert len(beats) >= 5  # beating went on after the error
    assert "stale NFS file handle" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.postgres
def test_a_trial_told_during_a_postgresql_restart_is_recorded():
    """The server is stopped while a trial runs and started 6 s later: the pooled connection is dead
    (pool_pre_ping replaces it) and the tell is retried until the server is back."""
    url, version = restartable_postgres()
    from study.sweep.optuna_storage import open_storage
    storage = open_storage(url, "unused", Path("."))
    name = f"restart-{os.getpid()}"
    study = optuna.create_study(study_name=name, storage=storage)
    trial = study.ask()
    cluster = ["pg_ctlcluster", version, "main"]
    subprocess.run([*cluster, "stop"], check=True)
    restart = threading.Timer(6, subprocess.run, args=([*cluster, "start"],), kwargs={"check": True})
    restart.start()
    try:
        study.tell(trial, 0.5)
    finally:
        restart.join()
    again = optuna.load_study(study_name=name, storage=url)
    assert again.trials[0].state == TrialState.COMPLETE and again.trials[0].value == 0.5
    optuna.delete_study(study_name=name, storage=url)
