"""Sweeps on a real SLURM cluster (`--launcher slurm`): a one-node cluster on this machine, which
.ci/start_slurm sets up. Skipped where SLURM is absent, failed under CI=1 (as the PostgreSQL tests are).

SLURM holds a requeued job back for two minutes (its BeginTime); the tests release it at once with
`scontrol update StartTime=now`, as an operator would, so that the suite does not wait."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import mlflow
import pytest

import sweep
from study.sweep.experiment_file import SlurmSpec
from study.sweep import shared_files
from study.sweep.shared_files import unshared
from study.sweep.slurm import SlurmError, tasks_per_node
from tests.helpers import DDP_EPOCHS, DDP_POINT, FOUR_POINTS, PACED, child_runs, losses, trials, write_experiment

ONE_LONG_POINT = """
[[sweep.arms]]
name = "dense"
set = { method = "dense" }
"""


def _queue() -> list[tuple[str, str, str]]:
    # -r: one line per array task; without it pending tasks show as one "14_[0-1]" that matches no job id
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T %r"], capture_output=True, text=True, check=True).stdout
    return [tuple(line.split()) for line in out.splitlines()]


def _node_busy_cleaning_up() -> bool:
    return "comp" in subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True).stdout


def _wait_for_jobs(job_ids: list[str], timeout: float, during=lambda: None) -> None:
    """Until the jobs leave the queue. A requeued job held for its BeginTime is released once the node has
    cleaned up after its last run: started within a second of the requeue, SLURM killed it as "non-startable
    batch job: Job credential revoked" (the old run's credential is revoked until its steps are gone)."""
    deadline = time.monotonic() + timeout
    held_since: dict[str, float] = {}
    while time.monotonic() < deadline:
        mine = [job for job in _queue() if job[0] in job_ids or job[0].split("_")[0] in job_ids]
        if not mine:
            return
        for job_id, state, reason in mine:
            if state == "PENDING" and reason == "BeginTime":
                held = time.monotonic() - held_since.setdefault(job_id, time.monotonic())
                if held > 5 and not _node_busy_cleaning_up():
                    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True)
                    held_since.pop(job_id)
        during()
        time.sleep(1)
    subprocess.run(["scancel", *job_ids])
    raise AssertionError(f"SLURM jobs {job_ids} still queued after {timeout:.0f} s: {_queue()}")


def _launched_jobs(out: str) -> list[str]:
    line = next(line for line in out.splitlines() if line.startswith("SLURM jobs "))
    return [j.rstrip(",") for j in line.removeprefix("SLURM jobs ").split(" (")[0].split()]


def test_a_detached_array_finishes_every_point_once(slurm_cluster, tmp_path, corpus_cache, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exp = write_experiment(tmp_path, corpus_cache, FOUR_POINTS)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert sweep.main([str(exp), "--launcher", "slurm", "--workers", "2", "--slurm", "cpus_per_worker=1",
                       "--tracking-uri", uri, "--detach", "--no-analysis"]) == 0
    jobs = _launched_jobs(capsys.readouterr().out)
    assert len(jobs) == 2
    _, parents = child_runs(uri)
    assert parents[0].info.status == "RUNNING"  # the driver left; the jobs go on
    _wait_for_jobs(jobs, timeout=240)
    assert sweep.main([str(exp), "--tracking-uri", uri, "--status"]) == 0  # reattach: the jobs are done
    out = capsys.readouterr().out
    assert out.count(" COMPLETE ") == 4 and all(f"{j} COMPLETED" in out for j in jobs)
    children, parents = child_runs(uri)
    done = [t for t in trials("tiny_sweep", _journal(tmp_path)) if t.state.name == "COMPLETE"]
    assert sorted(r.data.tags["grid_point"] for r in children) == sorted(t.user_attrs["point"] for t in done)
    assert len(children) == 4 and all(r.info.status == "FINISHED" for r in children)
    assert parents[0].info.status == "FINISHED" and parents[0].data.metrics["sweep/finished_trials"] == 4


def _journal(folder: Path):
    from study.sweep.optuna_storage import open_storage
    return open_storage(None, "tiny_sweep", folder / "runs")


def test_a_requeued_job_and_a_job_near_its_time_limit_resume_the_trial_in_its_run(slurm_cluster, tmp_path,
                                                                                  corpus_cache, monkeypatch, capsys):
    """One trial: `scontrol requeue` once it is training (SIGTERM: it checkpoints at its next step and SLURM
    requeues the job), then, once the job trains again, the time limit's signal, sent by the test as SLURM
    sends it `signal_seconds` before the limit (`scancel --signal=USR2`): it checkpoints and the job requeues
    itself. The trial ends once, in the run it began in, with every epoch trained once."""
    monkeypatch.chdir(tmp_path)
    for name, value in PACED.items():  # the job inherits it: 12 epochs of a second or more, mostly asleep
        monkeypatch.setenv(name, value)
    epochs = 12  # each signal follows a second of training (1 s polls)
    job, uri = _detach_one_trial(tmp_path, corpus_cache, capsys, epochs, time_minutes=30)
    script = next((tmp_path / "runs" / "slurm" / "tiny_sweep").rglob("*submission.sh")).read_text()
    assert "#SBATCH --signal=USR2@40" in script and "#SBATCH --time=30" in script and "#SBATCH --requeue" in script
    client = mlflow.MlflowClient(uri)
    signalled: list[int] = []  # epochs trained when each signal was sent
    logs = tmp_path / "runs" / "slurm" / "tiny_sweep"

    def signal_while_training() -> None:
        children, _ = child_runs(uri)
        trained = len(client.get_metric_history(children[0].info.run_id, "train/loss")) if children else 0
        running = any(j[0] == job and j[1] == "RUNNING" for j in _queue())
        # A run of the job prints "worker of" once its handlers are in place; a signal before that meets
        # Python's default action and kills the job (a requeued job's first epoch may be counted already:
        # the run before it can log one more epoch after the requeue's SIGTERM)
        started = sum(p.read_text().count(": worker of ") for p in logs.rglob("*.out"))
        training_again = started == len(signalled) + 1 and trained > max(signalled, default=0)
        if running and trained and len(signalled) < 2 and training_again:
            # Only while RUNNING: the trial logs one more epoch after a requeue's SIGTERM, and scancel sent to the
            # requeued (pending) job retries "can not be altered now" for minutes before it gives up
            command = ["scontrol", "requeue", job] if not signalled else ["scancel", "--signal=USR2", job]
            if subprocess.run(command, capture_output=True).returncode == 0:
                signalled.append(trained)

    _wait_for_jobs([job], timeout=300, during=signal_while_training)
    assert len(signalled) == 2, f"the trial finished before both signals: {signalled}"
    check_one_resumed_run(tmp_path, uri, epochs)


def _detach_one_trial(tmp_path: Path, corpus_cache: Path, capsys, epochs: int, time_minutes: int) -> tuple[str, str]:
    """One trial of `epochs` submitted as a detached one-job array with a time limit and its signal 40 s
    before it; returns (the job id, the tracking URI)."""
    exp = write_experiment(tmp_path, corpus_cache, ONE_LONG_POINT, epochs=epochs)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert sweep.main([str(exp), "--launcher", "slurm", "--workers", "1", "--slurm", "cpus_per_worker=1",
                       "--slurm", f"time_minutes={time_minutes}", "--slurm", "signal_seconds=40", "--tracking-uri",
                       uri, "--detach", "--no-analysis"]) == 0
    (job,) = _launched_jobs(capsys.readouterr().out)
    return job, uri


def check_one_resumed_run(tmp_path: Path, uri: str, epochs: int) -> None:
    assert sweep.main([str(tmp_path / "tiny_sweep.toml"), "--tracking-uri", uri, "--status"]) == 0
    children, parents = child_runs(uri)
    (run,) = children  # one run: each attempt resumed it
    assert run.info.status == "FINISHED" and parents[0].info.status == "FINISHED"
    assert "resumed_from_step" in run.data.tags or int(run.data.tags["resumed_from_epoch"]) > 0
    losses = mlflow.MlflowClient(uri).get_metric_history(run.info.run_id, "train/loss")
    assert sorted(m.step for m in losses) == list(range(1, epochs + 1))  # every epoch once
    log = "".join(p.read_text() for p in (tmp_path / "runs" / "slurm" / "tiny_sweep").rglob("*.out"))
    # The job ran again after the requeue and after the time limit's signal; it says "time limit near" when
    # that signal came, and "stopped by SIGTERM" for a requeue alone. SLURM may send the time limit's signal
    # in the same moment as a requeue (seen in CI), and then only the first message is written.
    assert "time limit near" in log and log.count("Starting with JobEnvironment") >= 3
    assert "Job completed successfully" in log.split("Starting with JobEnvironment")[-1]  # its last run did the work


@pytest.mark.long
def test_a_requeued_and_a_timed_out_job_resume_the_trial_in_its_run(slurm_cluster, tmp_path, corpus_cache,
                                                                     monkeypatch, capsys):
    """The same with SLURM's own timer (slow: a long trial waits for it): the 1-minute time limit's SIGUSR2,
    40 s before it, comes from SLURM's periodic check, some time after it is due."""
    monkeypatch.chdir(tmp_path)
    # Training must outlast a run of the job after the requeue: SLURM sends the time-limit signal only
    # from its periodic check, some time after the 20 s it is due, and a 300-epoch trial (17 epochs/s on
    # 2 free cores) once finished first. 1200 epochs: about 70 s on free cores, 150 s on busy ones.
    epochs = 1200
    job, uri = _detach_one_trial(tmp_path, corpus_cache, capsys, epochs, time_minutes=1)
    client = mlflow.MlflowClient(uri)
    requeued = []

    def requeue_once_training() -> None:
        children, _ = child_runs(uri)
        if not requeued and children and client.get_metric_history(children[0].info.run_id, "train/loss"):
            # Refused ("Job is pending execution") when the job has just requeued itself: SLURM may send the
            # time limit's signal up to a minute early. Then it is tried again once the job runs again.
            if subprocess.run(["scontrol", "requeue", job], capture_output=True).returncode == 0:
                requeued.append(time.monotonic())

    _wait_for_jobs([job], timeout=600, during=requeue_once_training)
    assert requeued
    check_one_resumed_run(tmp_path, uri, epochs)


def test_a_two_task_ddp_trial_matches_the_local_two_process_run(slurm_cluster, tmp_path, corpus_cache, monkeypatch,
                                                                ddp_reference):
    """train.processes = 2: the worker job holds two SLURM tasks and starts the trial's ranks as a job step
    over them (srun, ranks from SLURM_PROCID); its training follows the same trial run here under torchrun
    (dropout and SpecAugment off, so the runs differ in nothing but where the ranks were started)."""
    monkeypatch.chdir(tmp_path)
    exp = write_experiment(tmp_path, corpus_cache, DDP_POINT, epochs=DDP_EPOCHS)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert sweep.main([str(exp), "--launcher", "slurm", "--workers", "1", "--slurm", "cpus_per_worker=1",
                       "--tracking-uri", uri, "--no-analysis"]) == 0
    (run,), _ = child_runs(uri)
    assert run.info.status == "FINISHED" and run.data.params["train.processes"] == "2"
    log = "".join(p.read_text() for p in (tmp_path / "runs" / "slurm" / "tiny_sweep").rglob("*.out"))
    assert "ranks: SLURM tasks of job" in log

    reference = mlflow.MlflowClient(ddp_reference["tracking_uri"]).get_run(ddp_reference["run_id"])
    assert len(losses(uri, run.info.run_id)) == DDP_EPOCHS
    assert losses(uri, run.info.run_id) == pytest.approx(losses(ddp_reference["tracking_uri"], reference.info.run_id),
                                                         rel=1e-5)
    assert run.data.metrics["params/total"] == reference.data.metrics["params/total"]
    assert run.data.metrics["train/rank_weight_gap"] == 0.0  # the ranks on SLURM's tasks kept one model


def test_stores_the_nodes_cannot_reach_are_named_with_what_to_use(tmp_path):
    problems = unshared(None, tmp_path / "runs" / "optuna" / "x.journal", "http://127.0.0.1:5000", tmp_path / "runs")
    text = "; ".join(problems)
    assert "the Optuna journal" in text and "the runs/ folder" in text and "--tracking-uri http://127.0.0.1:5000" in text
    servers = unshared("postgresql://u@db-host/optuna", tmp_path / "x.journal", "http://mlflow-host:5000", tmp_path)
    assert len(servers) == 1 and servers[0].startswith("the runs/ folder")  # servers elsewhere are fine


def test_sqlite_and_locks_that_a_network_file_system_breaks_are_refused(tmp_path, monkeypatch):
    mounts = tmp_path / "mounts"
    mounts.write_text("/dev/sda1 / ext4 rw,relatime 0 0\n"
                      "filer:/home /shared nfs4 rw,relatime,vers=4.2,local_lock=none 0 0\n"
                      "filer:/scratch /scratch nfs rw,vers=3,nolock 0 0\n")
    monkeypatch.setattr(shared_files, "MOUNTS", mounts)
    assert unshared(None, Path("/shared/runs/optuna/x.journal"), "http://mlflow-host:5000", Path("/shared/runs")) == []
    sqlite = unshared("sqlite:////shared/optuna.db", Path("/shared/x.journal"), "sqlite:////shared/runs/mlflow.db",
                      Path("/shared/runs"))
    assert len(sqlite) == 2 and all("SQLite's locks fail" in p for p in sqlite)
    (no_lock,) = unshared(None, Path("/shared/x.journal"), "http://mlflow-host:5000", Path("/scratch/runs"))
    assert no_lock.startswith("the runs/ folder") and "nolock" in no_lock


def test_ranks_that_do_not_split_evenly_over_the_nodes_are_refused():
    spec = SlurmSpec(nodes_per_worker=2)
    assert tasks_per_node(spec, 4) == 2 and tasks_per_node(SlurmSpec(), 3) == 3
    with pytest.raises(SlurmError, match="train.processes = 3 does not split evenly over nodes_per_worker = 2"):
        tasks_per_node(spec, 3)
