"""The sweep driver: creates the Optuna studies and the MLflow parent run once, starts the worker
processes, reports progress, and closes the parent run when the workers are done.

Workers start as soon as the studies exist, so their imports overlap the driver's MLflow set-up (the
first use of a fresh SQLite store migrates it); they take no trial, and touch no MLflow store, until
the driver marks the first study with this launch's token (`LAUNCH_ATTR`).

Another machine joins a running sweep with `--join` (same experiment, storage and tracking URI):
it only starts workers, which load the studies and the parent run the driver created.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import traceback
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable

import mlflow
import optuna
from optuna.trial import TrialState
from tqdm import tqdm

from study import progress
from study.sweep import slurm
from study.sweep.experiment_file import Experiment, FinishedRun, SlurmSpec
from study.sweep.launch_check import check_launch, summary
from study.sweep.optuna_storage import (
    LAUNCH_ATTR,
    LAUNCH_FIRST_TRIAL,
    LAUNCH_NEXT,
    create_studies,
    journal_path,
    open_storage,
    point_of,
    study_names,
)
from study.sweep.recovery import reconcile_all
from study.sweep.storage_retry import TRANSIENT, describe
from study.sweep.timing import REQUEUE_SECONDS
from study.sweep.worker import WorkerSettings, settings_json
from study.tracking.mlflow_runs import close_run, run_status
from study.tracking.store import ensure_experiment

POLL_SECONDS = 2
STOP_SECONDS = 120  # a stopped worker has this long to checkpoint and exit before it is killed


@dataclass
class SweepArgs:
    workers: int = 1
    storage: str | None = None
    tracking_uri: str = ""
    devices: tuple[str, ...] = ()
    runs_dir: Path = Path("runs")
    join: bool = False
    max_restarts: int = 3  # lost workers replaced per launch (out of memory, a preempted node, a kill)
    hang_seconds: float = 1800.0  # a worker with no progress for this long is killed and replaced (0 = never)
    launcher: str = "local"  # local: worker processes here; slurm: a job array (study/sweep/slurm.py)
    detach: bool = False  # slurm: submit, then leave the jobs running (`--status` closes the launch)
    slurm: SlurmSpec = field(default_factory=SlurmSpec)


class SweepError(RuntimeError):
    """A sweep that cannot start (e.g. joining a sweep that does not exist)."""


def placements(experiment: Experiment, args: SweepArgs) -> list[dict]:
    """Per worker: an equal share of this machine's cores (GPU workers too: their input pipeline and
    decoding run there), and a GPU each, in turn, when devices are given."""
    devices = [{"train.device": args.devices[i % len(args.devices)]} if args.devices else {}
               for i in range(args.workers)]
    if experiment.config().train.threads:  # the experiment fixed its thread count
        return devices
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return [{**d, "train.threads": max(1, cores // args.workers)} for d in devices]


def _close_previous_parent(study: optuna.Study, client: mlflow.MlflowClient) -> None:
    """A driver that was killed left its parent run RUNNING; this launch takes over."""
    previous = study.user_attrs.get("parent_run_id")
    if previous and run_status(previous, client.tracking_uri) == "RUNNING":
        close_run(client, previous, "sweep driver lost; a later launch continued the sweep")


def _start_parent_run(experiment: Experiment, args: SweepArgs, n_points: int) -> str:
    experiment_id = ensure_experiment(args.tracking_uri, experiment.name)
    client = mlflow.MlflowClient(args.tracking_uri)
    run = client.create_run(experiment_id, run_name=f"sweep-{datetime.now():%Y%m%d-%H%M%S}",
                            tags={"sweep.role": "parent", "sweep.mode": experiment.spec.mode})
    for source in experiment.sources:  # the file and the files it extends
        client.log_artifact(run.info.run_id, str(source))
    for key, value in {"workers": args.workers, "storage": "journal" if not args.storage else args.storage.split(":")[0],
                       "devices": ",".join(args.devices) or "cpu", "points": n_points,
                       "experiment_file": str(experiment.path)}.items():
        client.log_param(run.info.run_id, key, value)
    return run.info.run_id


def expected_trials(experiment: Experiment) -> int:
    """Grid points plus, for each matched arm, its points times the runs of the method it matches."""
    if experiment.spec.mode == "search":
        return experiment.spec.trials
    points = experiment.points()
    runs = [FinishedRun.planned(experiment.config(p)) for p in points]  # as the matched arms will see them
    matched = sum(sum(r.method == arm.match and r.fits(arm.match_where) for r in runs)
                  * len(experiment.arm_points(arm, {})) for arm in experiment.arms if arm.match)
    return len(points) + matched


@dataclass
class LaunchResult:
    failed: int  # trials of this launch that failed
    parent_run_id: str  # the sweep's MLflow parent run
    detached: bool = False  # the worker jobs still run; `--status` reports them
    problems: list[str] = field(default_factory=list)  # breaches of the launch invariant (launch_check.py)


def launch(experiment: Experiment, overrides: dict, args: SweepArgs) -> LaunchResult:
    """Runs (or continues, or joins) the sweep."""
    if args.launcher == "slurm":  # before anything is created: stores the nodes cannot reach are refused
        slurm.check_reachable(args.storage, journal_path(args.runs_dir, experiment.name), args.tracking_uri,
                              args.runs_dir, args.slurm.partition)
    storage = open_storage(args.storage, experiment.name, args.runs_dir)
    total = expected_trials(experiment)
    grid = {p.key for p in experiment.points()}
    if args.join:
        try:
            studies = [optuna.load_study(study_name=n, storage=storage) for n in study_names(experiment.name)]
        except KeyError:
            raise SweepError(f"no sweep of {experiment.name} in this storage: start it first without --join") from None
        parent = studies[0].user_attrs["parent_run_id"]
        token = ""  # joining workers wait for nothing: the sweep is under way
    else:
        studies = create_studies(storage, experiment.name)
        token = uuid.uuid4().hex
        studies[0].set_user_attr(LAUNCH_NEXT, token)  # the workers of any earlier launch now stand down
    seats = placements(experiment, args)
    workers = _start_workers(experiment, overrides, args, seats, token)
    client = mlflow.MlflowClient(args.tracking_uri)  # a fresh SQLite store takes over a second to set up
    if not args.join:
        try:  # while the workers import: lost trials, the parent run, then the token that lets them begin
            # trials numbered from here on are this launch's (no clocks compared), its queued retries included
            first_trials = [_next_trial_number(study) for study in studies]
            reconcile_all(studies, grid, args.runs_dir, client, launch_start=True)
            _close_previous_parent(studies[0], client)
            parent = _start_parent_run(experiment, args, total)
            for study, first in zip(studies, first_trials):
                study.set_user_attr("parent_run_id", parent)
                study.set_user_attr(LAUNCH_FIRST_TRIAL, first)
            studies[0].set_user_attr(LAUNCH_ATTR, token)
        except BaseException:
            for proc in workers:
                proc.kill()
            raise
    logs = args.runs_dir / ("slurm" if args.launcher == "slurm" else "logs") / experiment.name
    print(f"sweep {experiment.name}: {total} trials, {args.workers} worker(s); "
          f"MLflow parent run {parent}; worker logs in {logs}")
    if args.launcher == "slurm":
        slurm.record_launch(slurm.launch_file(args.runs_dir, experiment), parent, [job.job_id for job in workers])
        print(f"SLURM jobs {', '.join(job.job_id for job in workers)} ({slurm.describe(args.slurm)})", flush=True)
        if args.detach:
            print(f"detached: the jobs go on without this process; `python sweep.py {experiment.path} --status` "
                  "shows where they are (and closes the launch when they are done)")
            return LaunchResult(0, parent, detached=True)
    restarts = 0

    def replace(i: int, proc: subprocess.Popen) -> subprocess.Popen | None:
        """A worker died mid-sweep: its trial is marked lost (Optuna FAIL, MLflow run FAILED) and queued
        again; a fresh worker takes the seat, while the restart budget lasts, and resumes that trial
        from its last checkpoint in the same MLflow run."""
        nonlocal restarts
        reconcile_all(studies, grid, args.runs_dir, client)
        if restarts >= args.max_restarts:
            return None
        restarts += 1
        return _start_workers(experiment, overrides, args, [seats[i]], token)[0]

    def requeue() -> None:
        """Trials whose heartbeat went stale during the launch (a worker on another machine lost)."""
        if reconcile_all(studies, grid, args.runs_dir, client):
            print("trials of lost workers queued again: a live worker resumes them", flush=True)

    interrupted, error = False, None
    try:
        _monitor(experiment.name, total, studies, workers, replace, args.hang_seconds, requeue)
    except KeyboardInterrupt:
        interrupted = True
    except TRANSIENT as exc:  # the storage stayed unreachable past its retries
        error = f"the Optuna storage stayed unreachable ({describe(exc)})"
    except Exception as exc:  # the tracking store down, a replacement job refused: no worker is left orphaned
        traceback.print_exc()
        error = f"the sweep driver failed ({describe(exc)})"
    if interrupted or error:  # no worker outlives its driver
        stop_workers(workers)
    lost = sum(1 for proc in workers if proc.returncode) if not error else 0
    done = failed = None
    problems: list[str] = []
    if not (interrupted or error):
        try:  # what the workers left: lost trials settled for the next launch, then the invariant
            reconcile_all(studies, grid, args.runs_dir, client)
            done, failed = _launch_counts(studies)
            problems = [] if args.join else check_launch(experiment, studies, args.tracking_uri, parent)
        except TRANSIENT as exc:
            error = f"the Optuna storage became unreachable at the end of the launch ({describe(exc)})"
    if not args.join:
        reason = error or (f"{lost} worker(s) exited with an error after {restarts} replacement(s)" if lost else "")
        reason = "; ".join(filter(None, [reason, summary(problems) if problems else ""]))
        close_launch(client, parent, done, failed, restarts, "" if interrupted else reason, interrupted)
    if interrupted:
        raise KeyboardInterrupt
    if error:
        raise SweepError(f"{error}: the workers were stopped and the parent run closed; rerun the "
                         "command to continue (finished trials are kept)")
    if lost:
        raise SweepError(f"a worker exited with an error ({restarts} replaced); see {args.runs_dir / 'logs' / experiment.name}"
                         + (f". {summary(problems)}" if problems else ""))
    return LaunchResult(failed, parent, problems=problems)


def stop_workers(workers: list) -> None:
    """SIGTERM to each (a training step checkpoints), then a kill for any still there after STOP_SECONDS."""
    for proc in workers:
        proc.terminate()
    deadline = time.monotonic() + STOP_SECONDS
    for proc in workers:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


def close_launch(client: mlflow.MlflowClient, parent: str, done: int | None, failed: int | None, restarts: int,
                 reason: str = "", interrupted: bool = False) -> None:
    """The parent run's last figures, and its end: KILLED (interrupted), FAILED (with the reason) or FINISHED."""
    if done is not None:
        client.log_metric(parent, "sweep/finished_trials", done)
        client.log_metric(parent, "sweep/failed_trials", failed)
    client.log_metric(parent, "sweep/worker_restarts", restarts)
    if reason:
        client.set_tag(parent, "failure_reason", f"{reason}; rerun the command to continue")
    client.set_terminated(parent, status="KILLED" if interrupted else "FAILED" if reason else "FINISHED")


def close_detached(experiment: Experiment, storage_url: str | None, runs_dir: Path,
                   tracking_uri: str) -> tuple[list[tuple[str, str]], list[str]]:
    """`--status` of a detached SLURM launch: its jobs' states and, once every job has ended, the launch
    invariant's breaches; the launch's parent run is then closed as the driver would have closed it:
    FINISHED only when every planned point finished once."""
    recorded = slurm.recorded_launch(slurm.launch_file(runs_dir, experiment))
    if recorded is None:
        return [], []
    parent, job_ids = recorded
    states = [(job_id, slurm.job_state(job_id)[0]) for job_id in job_ids]
    if not all(state in slurm.ENDED | {"GONE"} for _, state in states):
        return states, []
    storage = open_storage(storage_url, experiment.name, runs_dir)
    studies = [optuna.load_study(study_name=n, storage=storage) for n in study_names(experiment.name)]
    problems = check_launch(experiment, studies, tracking_uri, parent)
    if run_status(parent, tracking_uri) == "RUNNING":
        done, failed = _launch_counts(studies)
        bad_jobs = [f"job {job} {state}" for job, state in states if state not in ("COMPLETED", "GONE")]
        reason = "; ".join(filter(None, [", ".join(bad_jobs), summary(problems) if problems else ""]))
        close_launch(mlflow.MlflowClient(tracking_uri), parent, done, failed, 0, reason)
    return states, problems


def _launch_counts(studies: list[optuna.Study]) -> tuple[int, int]:
    """(finished trials, points that failed in this launch) over the sweep's studies."""
    done = sum(len(s.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) for s in studies)
    return done, sum(_failed_in_launch(s) for s in studies)


def _next_trial_number(study: optuna.Study) -> int:
    return max((t.number for t in study.get_trials(deepcopy=False)), default=-1) + 1


def _failed_in_launch(study: optuna.Study) -> int:
    """Points whose trial failed in this launch and that no later trial finished (a lost worker's
    trial, resumed by its replacement, is not a failure)."""
    first = study.user_attrs[LAUNCH_FIRST_TRIAL]
    trials = study.get_trials(deepcopy=False)
    key = lambda t: point_of(t) or f"search trial {t.number}"  # noqa: E731 (search trials have no point)
    finished = {key(t) for t in trials if t.state == TrialState.COMPLETE}
    return len({key(t) for t in trials if t.state == TrialState.FAIL and t.number >= first and key(t) not in finished})


def _start_workers(experiment: Experiment, overrides: dict, args: SweepArgs, seats: list[dict],
                   launch_token: str) -> list:
    """Worker processes on this machine, or SLURM jobs, one per seat."""
    if args.launcher != "slurm":
        return [_start_worker(experiment, overrides, args, i, seat, launch_token) for i, seat in enumerate(seats)]
    spec = args.slurm
    placement = {"train.threads": spec.cpus_per_worker, **({"train.device": "cuda"} if spec.gpus_per_worker else {})}
    settings = WorkerSettings(str(experiment.path.resolve()), overrides, args.storage, args.tracking_uri,
                              str(args.runs_dir.resolve()), placement, launch_token, cluster_job=True)
    ids = slurm.submit(spec, (args.runs_dir / "slurm" / experiment.name).resolve(), f"sweep-{experiment.name}",
                       [settings_json(settings)] * len(seats), ranks=slurm.trial_ranks(experiment))
    return [slurm.SlurmJob(job_id) for job_id in ids]


def _start_worker(experiment: Experiment, overrides: dict, args: SweepArgs, seat: int,
                  placement: dict, launch_token: str) -> subprocess.Popen:
    log_dir = args.runs_dir / "logs" / experiment.name
    log_dir.mkdir(parents=True, exist_ok=True)
    settings = WorkerSettings(str(experiment.path), overrides, args.storage, args.tracking_uri,
                              str(args.runs_dir), placement, launch_token, os.getpid())
    progress_file = log_dir / f"worker-{os.getpid()}-{seat}.progress"
    progress_file.touch()  # the watchdog's clock starts now
    with open(log_dir / f"worker-{os.getpid()}-{seat}.log", "a") as log:
        proc = subprocess.Popen([sys.executable, "-m", "study.sweep.worker", settings_json(settings)],
                                stdout=log, stderr=subprocess.STDOUT, env={**_worker_env(), progress.ENV: str(progress_file)})
    proc.progress_file = progress_file
    return proc


def _worker_env() -> dict[str, str]:
    """This checkout first on the path, so workers run the same code whatever the working directory."""
    root = str(Path(__file__).resolve().parents[2])  # the folder holding `study`
    return {**os.environ, "PYTHONPATH": os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])}


def _trial_line(trial: optuna.trial.FrozenTrial) -> str:
    name = trial.user_attrs.get("run_name", f"trial {trial.number}")
    if trial.state == TrialState.FAIL:
        return f"FAILED   {name}: {trial.user_attrs.get('failure_reason', 'see the worker log')}"
    a = trial.user_attrs
    seconds = (trial.datetime_complete - trial.datetime_start).total_seconds()
    return (f"finished {name}: dev WER {a['dev/wer']:.2%}, test WER {a['test/wer']:.2%}, "
            f"{int(a['params/total']):,} params ({a['params/reduction']:.1%} pruned), {seconds:.0f} s")


def _monitor(name: str, total: int, studies: list[optuna.Study], workers: list[subprocess.Popen],
             replace: Callable[[int, subprocess.Popen], subprocess.Popen | None], hang_seconds: float = 0,
             requeue: Callable[[], None] = lambda: None) -> None:
    """One line per trial that ends, and a bar of trials done out of the expected total; a worker that
    exits with an error is handed to `replace` once, and its seat taken by what that returns. A worker
    whose progress file has not moved for `hang_seconds` (stopped, deadlocked) is killed first, so it is
    replaced like a lost one. Every REQUEUE_SECONDS `requeue` looks for trials lost elsewhere."""
    last_requeue = time.monotonic()
    handled: set[int] = set()
    seen = {(s.study_name, t.number) for s in studies for t in s.get_trials(deepcopy=False)
            if t.state in (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)}
    already = sum(1 for s in studies for t in s.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    bar = tqdm(total=max(total, already), initial=already, unit="trial", desc=name, dynamic_ncols=True)
    while True:
        for i, proc in enumerate(workers):
            if (hang_seconds and proc.progress_file is not None and proc.poll() is None
                    and progress.idle_seconds(proc.progress_file) > hang_seconds):
                bar.write(f"worker {i} made no progress for {hang_seconds:.0f} s (hung or stopped): killed")
                proc.kill()
                proc.wait()
            if proc.poll() and proc.pid not in handled:
                handled.add(proc.pid)
                fresh = replace(i, proc)
                bar.write(f"worker {i} lost (exit code {proc.returncode}): its trial is marked lost and "
                          + ("queued again; a fresh worker resumes it" if fresh else "waits for the next launch"))
                if fresh:
                    workers[i] = fresh
        running = any(proc.poll() is None for proc in workers)
        for study in studies:
            for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)):
                if (study.study_name, trial.number) not in seen:
                    seen.add((study.study_name, trial.number))
                    bar.write(_trial_line(trial))
                    bar.update(1)
        if not running:
            break
        if time.monotonic() - last_requeue > REQUEUE_SECONDS:
            requeue()
            last_requeue = time.monotonic()
        try:  # returns as soon as the last worker exits, not up to a poll later
            next(proc for proc in workers if proc.poll() is None).wait(timeout=POLL_SECONDS)
        except (StopIteration, subprocess.TimeoutExpired):
            pass
    bar.total = max(bar.n, 1)  # the matched arms may have had fewer distinct budgets than expected
    bar.refresh()
    bar.close()
