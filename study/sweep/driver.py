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

from study.names import TAG_ROLE
from study.sweep.experiment_file import Experiment, FinishedRun, SlurmSpec
from study.sweep.launch_check import check_launch, summary
from study.sweep.parent_run import close_launch, close_previous_parent, launch_counts
from study.sweep.optuna_storage import (
    LAUNCH_ATTR,
    LAUNCH_FIRST_TRIAL,
    LAUNCH_NEXT,
    create_studies,
    open_storage,
    study_names,
)
from study.sweep.recovery import reconcile_all
from study.sweep.storage_retry import TRANSIENT, describe
from study.sweep.timing import REQUEUE_SECONDS
from study.sweep.launchers import LAUNCHERS
from study.sweep.worker import WorkerSettings
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
    launcher: str = "local"  # a key of LAUNCHERS: local worker processes, or a SLURM job array (study/sweep/launchers/)
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


def _start_parent_run(experiment: Experiment, args: SweepArgs, n_points: int) -> str:
    experiment_id = ensure_experiment(args.tracking_uri, experiment.name)
    client = mlflow.MlflowClient(args.tracking_uri)
    run = client.create_run(experiment_id, run_name=f"sweep-{datetime.now():%Y%m%d-%H%M%S}",
                            tags={TAG_ROLE: "parent", "sweep.mode": experiment.spec.mode})
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
    launcher = LAUNCHERS[args.launcher](experiment, args.runs_dir, storage=args.storage, tracking_uri=args.tracking_uri,
                                        spec=args.slurm, detach=args.detach)
    launcher.check()  # before anything is created: stores the workers cannot reach are refused
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
    settings = WorkerSettings(str(experiment.path), overrides, args.storage, args.tracking_uri, str(args.runs_dir),
                              launch=token)
    workers = launcher.start(settings, seats)
    client = mlflow.MlflowClient(args.tracking_uri)  # a fresh SQLite store takes over a second to set up
    if not args.join:
        try:  # while the workers import: lost trials, the parent run, then the token that lets them begin
            # trials numbered from here on are this launch's (no clocks compared), its queued retries included
            first_trials = [_next_trial_number(study) for study in studies]
            reconcile_all(studies, grid, args.runs_dir, client, launch_start=True)
            close_previous_parent(studies[0], client)
            parent = _start_parent_run(experiment, args, total)
            for study, first in zip(studies, first_trials):
                study.set_user_attr("parent_run_id", parent)
                study.set_user_attr(LAUNCH_FIRST_TRIAL, first)
            studies[0].set_user_attr(LAUNCH_ATTR, token)
        except BaseException:
            for proc in workers:
                proc.kill()
            raise
    print(f"sweep {experiment.name}: {total} trials, {args.workers} worker(s); "
          f"MLflow parent run {parent}; worker logs in {launcher.log_dir}")
    launcher.started(parent, workers)
    if launcher.detach:
        print(f"detached: the workers go on without this process; `python sweep.py {experiment.path} --status` "
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
        return launcher.start(settings, [seats[i]])[0]

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
            done, failed = launch_counts(studies)
            problems = [] if args.join else check_launch(experiment, studies, args.tracking_uri, parent)
        except TRANSIENT as exc:
            error = f"the Optuna storage became unreachable at the end of the launch ({describe(exc)})"
        except Exception as exc:  # e.g. the tracking store down: the launch cannot be checked
            traceback.print_exc()
            error = f"the launch could not be checked at its end ({describe(exc)})"
    if not args.join:
        reason = error or (f"{lost} worker(s) exited with an error after {restarts} replacement(s)" if lost else "")
        reason = "; ".join(filter(None, [reason, summary(problems) if problems else ""]))
        try:
            close_launch(client, parent, done, failed, restarts, "" if interrupted else reason, interrupted)
        except Exception as exc:  # the parent stays RUNNING; the next launch closes it
            error = error or f"the parent run {parent} could not be closed ({describe(exc)})"
    if interrupted:
        raise KeyboardInterrupt
    if error:
        raise SweepError(f"{error}: the workers were stopped and the parent run closed; rerun the "
                         "command to continue (finished trials are kept)")
    if lost:
        raise SweepError(f"a worker exited with an error ({restarts} replaced); see {launcher.log_dir}"
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


def _next_trial_number(study: optuna.Study) -> int:
    return max((t.number for t in study.get_trials(deepcopy=False)), default=-1) + 1


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
            if (hang_seconds and proc.progress is not None and proc.poll() is None
                    and proc.progress.idle_seconds() > hang_seconds):
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
