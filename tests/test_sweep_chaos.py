"""A seeded schedule of faults over one 8-point sweep with 3 workers: a worker killed (SIGKILL), a
worker stopped (SIGSTOP: found by the hang watchdog, or stopped with its driver), the checkpoint folder
filled up (a tmpfs, where the tests run as root), the driver stopped (SIGTERM) mid-launch and launched
again. After the second launch the launch invariant holds: every point COMPLETE once, one FINISHED run
per point, nothing RUNNING, the last parent FINISHED.

The short form (the journal, about a minute) runs in the suite. The long form adds PostgreSQL stopped
for 150 s (SWEEP_CHAOS_OUTAGE_SECONDS) under the default retries and, in every process, the first trial
creation and the first pop of a queued trial answered with a dropped connection after the commit:

    SWEEP_CHAOS_SEEDS=0,1,2 python -m pytest -m long tests/test_sweep_chaos.py
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.services import restartable_postgres
from tests.helpers import (
    FOUR_POINTS,
    PACED,
    QUICK_TIMING,
    ROOT,
    check_grid_ran_once,
    child_runs,
    fill,
    run_sweep,
    small_disk,
    start_sweep,
    sweep_command,
    sweep_storage,
    worker_pids,
    write_experiment,
)

pytestmark = pytest.mark.slow  # processes started, trials trained end to end

EIGHT_POINTS = FOUR_POINTS.replace('"train.seed" = [0, 1]', '"train.seed" = [0, 1, 2, 3]')
SEEDS = [int(s) for s in os.environ.get("SWEEP_CHAOS_SEEDS", "0").split(",")]
OUTAGE_SECONDS = float(os.environ.get("SWEEP_CHAOS_OUTAGE_SECONDS", "150"))
# PostgreSQL: the default 180 s of retries outlast the outage; heartbeats come faster than by default, so
# that staleness (which must outlast retries, their longest pause and two beats: timing.py) stays short
POSTGRES_TIMING = {**QUICK_TIMING, "SWEEP_RETRY_SECONDS": "180", "SWEEP_HEARTBEAT_SECONDS": "5",
                   "SWEEP_STALE_SECONDS": "230"}


def _training(folder: Path, driver, at_least: int, deadline: float) -> None:
    """Waits until `at_least` trials have checkpointed (they are mid-training)."""
    while len(list(folder.glob("runs/trials/*/*/checkpoint.pt"))) < at_least:
        assert driver.poll() is None and time.time() < deadline, "the sweep ended before the faults"
        time.sleep(0.2)


def _outage(seconds: float) -> threading.Thread:
    _, version = restartable_postgres()
    cluster = ["pg_ctlcluster", version, "main"]
    def stop_then_start() -> None:
        subprocess.run([*cluster, "stop"], check=True)
        time.sleep(seconds)
        subprocess.run([*cluster, "start"], check=True)
    thread = threading.Thread(target=stop_then_start)
    thread.start()
    return thread


def _faults(seed: int, folder: Path, driver, outage: bool, disk: Path | None) -> list[str]:
    """The seeded schedule, in the first launch: SIGKILL and SIGSTOP of random workers, the checkpoint
    disk filled (with `disk`) and the database stopped for OUTAGE_SECONDS (with `outage`), in a random
    order, then SIGTERM to the driver. Returns what was done, for the failure message."""
    rng, done, deadline = random.Random(seed), [], time.time() + 120
    _training(folder, driver, 1, deadline)
    restart = None
    faults = ["kill", "stop", *(["full"] if disk else []), *(["outage"] if outage else [])]
    for fault in rng.sample(faults, len(faults)):
        time.sleep(rng.uniform(0.5, 2.5))
        if fault == "outage":
            restart = _outage(OUTAGE_SECONDS)
            done.append(f"database stopped for {OUTAGE_SECONDS:.0f} s")
            continue
        if fault == "full":
            fill(disk)
            done.append("checkpoint disk filled")
            continue
        workers = worker_pids(driver)
        if not workers:
            break
        victim = rng.choice(workers)
        os.kill(victim, signal.SIGKILL if fault == "kill" else signal.SIGSTOP)
        done.append(f"{fault} worker {victim}")
    time.sleep(rng.uniform(1, 17))  # the hung one is found (12 s) and replaced, or not yet
    if driver.poll() is None:
        driver.send_signal(signal.SIGTERM)
        done.append("SIGTERM driver")
    if restart:
        restart.join()
    return done


@pytest.mark.parametrize("seed", SEEDS)
def test_a_seeded_schedule_of_faults_leaves_every_point_finished_once(tmp_path, corpus_cache, seed, request):
    run_schedule(seed, "journal", tmp_path, corpus_cache, request)


@pytest.mark.long
@pytest.mark.postgres
@pytest.mark.parametrize("seed", SEEDS)
def test_the_long_schedule_on_postgresql_with_an_outage_and_lost_answers(tmp_path, corpus_cache, seed, request):
    run_schedule(seed, "postgresql", tmp_path, corpus_cache, request)


def run_schedule(seed: int, storage_kind: str, tmp_path: Path, corpus_cache: Path, request) -> None:
    with small_disk(tmp_path / "runs/trials", 64, optional=True) as disk:  # no disk to fill without root
        _run_schedule(seed, storage_kind, tmp_path, corpus_cache, request, disk)


def _run_schedule(seed: int, storage_kind: str, tmp_path: Path, corpus_cache: Path, request, disk: Path | None) -> None:
    storage = sweep_storage(storage_kind, tmp_path, request)
    exp = write_experiment(tmp_path, corpus_cache, EIGHT_POINTS, epochs=5)  # paced: about 5 s a trial
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    options = ["--workers", "3", "--hang-minutes", "0.2", "--max-restarts", "6"]
    env = {**os.environ, **QUICK_TIMING, **PACED}
    if storage_kind == "postgresql":
        options += ["--storage", storage]
        env = {**os.environ, **POSTGRES_TIMING, **PACED, "SWEEP_TEST_LOST_ANSWERS": "create,pop",
               "PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "faults"), os.environ.get("PYTHONPATH", "")])}
    command = sweep_command(exp, uri, *options)
    driver = start_sweep(command, tmp_path, tmp_path / "launch-1.log", env=env)
    schedule = _faults(seed, tmp_path, driver, outage=storage_kind == "postgresql", disk=disk)
    try:
        # stops its workers (a stopped one too) and closes its runs, once the database is back
        driver.wait(timeout=180 + (OUTAGE_SECONDS if storage_kind == "postgresql" else 0))
    except subprocess.TimeoutExpired:
        for pid in [*worker_pids(driver), driver.pid]:
            os.kill(pid, signal.SIGKILL)
        raise AssertionError(f"the driver did not stop: {schedule}") from None
    if disk:
        (disk / "filler").unlink(missing_ok=True)
    second = run_sweep(command, tmp_path, env=env, timeout=900)
    logs = "\n".join(p.read_text()[-1500:] for p in (tmp_path / "runs/logs").rglob("*.log"))
    assert second.returncode == 0, f"{schedule}\n{second.stdout[-2000:]}{second.stderr[-2000:]}{logs}"
    check_grid_ran_once(uri, storage, failing=False, points=8)
    trials = optuna.load_study(study_name="tiny_sweep", storage=storage).get_trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING], schedule
    _, parents = child_runs(uri)
    last = max(parents, key=lambda p: p.info.start_time)
    assert last.info.status == "FINISHED", schedule
