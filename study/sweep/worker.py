"""A sweep worker process: takes grid points (or search trials) from Optuna until none is left.

Started by the driver (study/sweep/driver.py) as `python -m study.sweep.worker SETTINGS_JSON`; several run at
once, on one machine or many, and coordinate only through the Optuna storage.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import optuna
from mlflow.entities import RunTag
from optuna.trial import TrialState

from study.names import TAG_GRID_POINT
from study.runtime import progress, stop_request
from study.sweep.experiment_file import Experiment, Point, load_experiment
from study.sweep.launch_check import finished_runs, search_runs
from study.sweep.optuna_storage import (
    LAUNCH_ATTR,
    LAUNCH_FIRST_TRIAL,
    LAUNCH_NEXT,
    Heartbeat,
    heartbeat_path,
    open_storage,
    point_of,
    study_names,
    worker_id,
)
from study.sweep.process import exit_now
from study.sweep.recovery import is_lost, pending, point_status, reconcile, searched, trials_by_point
from study.sweep.timing import PHASE_POLL_SECONDS, REQUEUE_SECONDS
from study.tracking.mlflow_runs import close_run, run_label, run_status
from study.tracking.trial_record import recorded_run, trial_dir
from study.trial import run_trial

REPORTED = ("dev/wer", "test/wer", "test/cer", "params/total", "params/reduction", "flops/encoder_10s",
            "latency/ms_b1_10s")
LAUNCH_POLL_SECONDS = 0.1  # a local worker waits for its driver's set-up (about a second)
CLUSTER_LAUNCH_POLL_SECONDS = 2.0  # a cluster job may wait in the queue past its launch: no busy polling
CLUSTER_LAUNCH_WAIT_SECONDS = 600.0  # a job whose launch was never marked (its driver killed) then gives up


@dataclass
class WorkerSettings:
    experiment: str
    overrides: dict[str, Any]
    storage: str | None
    tracking_uri: str
    runs_dir: str
    placement: dict[str, Any] = field(default_factory=dict)  # train.threads / train.device of this worker
    launch: str = ""  # the driver's launch token: no trial before the first study carries it ("": joined, no wait)
    driver_pid: int = 0  # the process that started this worker (0: its parent when it starts)
    cluster_job: bool = False  # a SLURM job: no driver beside it, so it looks for lost trials itself while it waits


class TrialFailed(Exception):
    """A trial that raised (bad audio, NaN loss, impossible budget): recorded FAIL, the sweep goes on.
    Any other error in a worker (storage, sampler) stops it."""


def point_param(keys: list[str]) -> str:
    """Optuna fixes a categorical's choices per study, so each grid (a changed experiment file,
    a new set of matched budgets) gets its own parameter name."""
    return "point_" + hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()[:8]


def live_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """RUNNING trials: a worker runs them, or they are lost and `reconcile` queues their points again
    (one that nobody took up, once it is STALE_SECONDS old)."""
    return study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))


def _taken_by_another(trials: list[optuna.trial.FrozenTrial], trial: optuna.Trial, key: str) -> bool:
    """True when another trial finished this point or is running it. `trials` is read after this trial
    recorded its point, so of two trials that drew one point at once, whichever reads second sees the
    first and yields, in any interleaving (both may yield: the point stays pending and is drawn again).
    Yielding only to a lower-numbered trial let both run when the higher one checked first."""
    return any(point_of(t) == key and t.number != trial.number and t.state in (TrialState.COMPLETE, TrialState.RUNNING)
               for t in trials)


def _failed_in_this_launch(trials: list[optuna.trial.FrozenTrial], key: str, first: int) -> bool:
    """A point whose attempt in this launch raised. The grid sampler counts yielded duplicates as visited;
    with its grid used up it draws at random, and ran such a point a second time in the same launch."""
    return any(point_of(t) == key and t.number >= first and t.state == TrialState.FAIL and not is_lost(t)
               for t in trials)


def suggest(trial: optuna.Trial, search: dict[str, dict]) -> dict[str, Any]:
    """Optuna ranges -> overrides; list-valued choices travel as JSON strings."""
    values = {}
    for key, rng in search.items():
        if "choices" in rng:
            encoded = [json.dumps(c) for c in rng["choices"]]
            values[key] = json.loads(trial.suggest_categorical(key, encoded))
        elif isinstance(rng["low"], int) and isinstance(rng["high"], int) and not rng.get("log"):
            values[key] = trial.suggest_int(key, rng["low"], rng["high"], step=rng.get("step", 1))
        else:
            values[key] = trial.suggest_float(key, rng["low"], rng["high"], log=rng.get("log", False),
                                              step=rng.get("step"))
    return values


class PointSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler, tolerating the queued retries (trials with no grid id of their own)."""

    def after_trial(self, study, trial, state, values) -> None:
        if "grid_id" in study._storage.get_trial_system_attrs(trial._trial_id):
            super().after_trial(study, trial, state, values)


def grid_sampler(points: list[Point]) -> optuna.samplers.GridSampler:
    keys = [p.key for p in points]
    sampler = PointSampler({point_param(keys): keys})
    # Optuna hands its (shuffled) grid out in order to a study's first trials. Dense points go first:
    # magnitude pruning starts from the dense model, and a trial that needs it untrained waits for it.
    if hasattr(sampler, "_all_grids"):
        sampler._all_grids.sort(key=lambda grid: json.loads(grid[0]).get("method") != "dense")
    return sampler


class Worker:
    def __init__(self, settings: WorkerSettings):
        self.driver_pid = settings.driver_pid or os.getppid()  # a driver gone before this line is noticed
        self.parent_pid = os.getppid()  # the driver, or the forkserver it started (which ends with it)
        self.settings = settings
        self.runs_dir = Path(settings.runs_dir)
        self.experiment: Experiment = load_experiment(settings.experiment, settings.overrides)
        self.storage = open_storage(settings.storage, self.experiment.name, self.runs_dir)

    def load(self, name: str, sampler: optuna.samplers.BaseSampler) -> optuna.Study:
        return optuna.load_study(study_name=name, storage=self.storage, sampler=sampler)

    def objective(self, study: optuna.Study, points: list[Point] | None):
        def run(trial: optuna.Trial) -> tuple[float, float]:
            if points is not None:
                keys = [p.key for p in points]
                queued = point_of(trial)
                if queued is not None and queued not in keys:  # queued for a grid that has since changed
                    trial.set_user_attr("skipped", "queued point is no longer in the grid")
                    raise optuna.TrialPruned()
                key = queued if queued is not None else trial.suggest_categorical(point_param(keys), keys)
                trial.set_user_attr("point", key)
                trials = study.get_trials(deepcopy=False)  # one read of the storage for both checks
                if _taken_by_another(trials, trial, key):  # two workers drew the same point at once
                    trial.set_user_attr("skipped", "duplicate of a running or finished trial")
                    raise optuna.TrialPruned()
                if queued is None and _failed_in_this_launch(trials, key, study.user_attrs[LAUNCH_FIRST_TRIAL]):
                    trial.set_user_attr("skipped", "failed earlier in this launch (retried once per launch)")
                    raise optuna.TrialPruned()
                point, chosen = Point.from_key(key), {}
            else:
                point, chosen = Point("search", ()), suggest(trial, self.experiment.spec.search)
            cfg = self.experiment.config(point, {**chosen, **self.settings.placement})
            for name, value in (("worker", worker_id()), ("method", cfg.method), ("run_name", run_label(cfg)),
                                ("trial_dir", str(trial_dir(cfg, self.runs_dir).resolve()))):
                trial.set_user_attr(name, value)
            tags = {"mlflow.parentRunId": study.user_attrs["parent_run_id"], "optuna.study_name": study.study_name,
                    "optuna.trial_number": str(trial.number),
                    TAG_GRID_POINT: point.key if points is not None else json.dumps(chosen, sort_keys=True)}
            if points is not None:
                if (reused := self.finished_run_of(study, trial, point.key)) is not None:
                    return reused
                self.supersede_earlier_attempt(study, trial, point.key, trial_dir(cfg, self.runs_dir))
            with Heartbeat(heartbeat_path(self.runs_dir, study, trial.number)):
                try:
                    result = run_trial(cfg, self.settings.tracking_uri, self.runs_dir, tags,
                                       on_run=lambda run_id: trial.set_user_attr("mlflow_run_id", run_id))
                except (Exception, KeyboardInterrupt) as exc:
                    if not (isinstance(exc, KeyboardInterrupt) or stop_request.requested()):
                        trial.set_user_attr("failure_reason", f"{type(exc).__name__}: {exc}"[:2000])
                        raise TrialFailed(str(exc)) from exc
                    # SIGTERM (a preemption, a requeue) or Ctrl-C, or an error while stopping (the checkpoint
                    # hit a full disk): the point is queued again for the next free worker; this one stops
                    if points is not None:
                        study.enqueue_trial({}, user_attrs={"point": point.key}, skip_if_exists=False)
                    if isinstance(exc, KeyboardInterrupt):
                        raise
                    raise KeyboardInterrupt(f"stopping: {type(exc).__name__}: {exc}") from exc
            self.claim_run(trial, result.run_id, tags)
            for name in REPORTED:
                trial.set_user_attr(name, result.metrics[name])
            return result.metrics["dev/wer"], result.metrics["params/total"]
        return run

    def finished_run_of(self, study: optuna.Study, trial: optuna.Trial, key: str) -> tuple[float, float] | None:
        """An earlier attempt whose run FINISHED but whose trial did not complete (a signal at the tell, an
        outage, a crash) is not trained again, on any machine: its run's figures complete this trial."""
        runs = search_runs(mlflow.MlflowClient(self.settings.tracking_uri), self.experiment.name,
                           f"attributes.status = 'FINISHED' and tags.`optuna.study_name` = '{study.study_name}'")
        done = [r for r in runs if r.data.tags.get(TAG_GRID_POINT) == key and set(REPORTED) <= set(r.data.metrics)]
        if not done:
            return None
        run = done[0]
        print(f"{trial.user_attrs.get('run_name', key)}: its run {run.info.run_id} finished in an earlier attempt; "
              "taking its figures instead of training again", flush=True)
        self.claim_run(trial, run.info.run_id)
        trial.set_user_attr("reused_finished_run", True)
        for name in REPORTED:
            trial.set_user_attr(name, run.data.metrics[name])
        return run.data.metrics["dev/wer"], run.data.metrics["params/total"]

    def claim_run(self, trial: optuna.Trial, run_id: str, tags: dict[str, str] | None = None) -> None:
        """Trial and run name each other, also when the run was finished by an earlier attempt whose tell was
        lost (its DONE folder, or its FINISHED run, completes this trial) or by another trial that needed it
        as its dense source (a run tagged with its parent alone): `tags` give it this trial's study and point."""
        trial.set_user_attr("mlflow_run_id", run_id)
        named = {**(tags or {}), "optuna.trial_number": str(trial.number)}
        mlflow.MlflowClient(self.settings.tracking_uri).log_batch(run_id, tags=[RunTag(k, v) for k, v in named.items()])

    def supersede_earlier_attempt(self, study: optuna.Study, trial: optuna.Trial, key: str, folder: Path) -> None:
        """A point whose earlier attempt was lost resumes from that attempt's checkpoint when its trial folder
        is here (one machine, or runs/ shared); otherwise it starts over, and the earlier attempt's run,
        which nothing would resume, is closed FAILED with the reason."""
        earlier = [t for t in study.get_trials(deepcopy=False) if point_of(t) == key and t.number < trial.number
                   and t.state == TrialState.FAIL and t.user_attrs.get("mlflow_run_id")]
        if not earlier:
            return
        attempt = earlier[-1]
        run_id = attempt.user_attrs["mlflow_run_id"]
        if recorded_run(folder) == run_id:
            return  # its checkpoint is here: run_trial resumes it in the same run
        if run_status(run_id, self.settings.tracking_uri) in (None, "FINISHED"):
            return
        where = attempt.user_attrs.get("worker", "another machine")
        print(f"{trial.user_attrs.get('run_name', key)}: the earlier attempt (trial {attempt.number} on {where}) "
              f"left its checkpoint in a runs/ folder this machine does not share; starting over in a new run "
              f"(its run {run_id} is closed FAILED). Share runs/ between machines to resume instead.", flush=True)
        close_run(mlflow.MlflowClient(self.settings.tracking_uri), run_id, f"superseded: trial {trial.number} on "
                  f"{worker_id()} started the point over (this run's checkpoint is not on that machine)")

    def run_grid(self, study: optuna.Study, points: list[Point]) -> None:
        """Takes pending points until none is left; then waits while other trials run, since one whose
        worker is lost is queued again and this worker resumes it."""
        keys = [p.key for p in points]
        first = study.user_attrs[LAUNCH_FIRST_TRIAL]
        objective = self.objective(study, points)
        last_recovery = time.monotonic()
        while True:
            todo = pending(study, keys, first)
            if todo:
                self.queue_lost_points(study, set(keys), todo)
                study.optimize(objective, n_trials=1, catch=(TrialFailed,))
            elif live_trials(study) and self.driver_alive():
                progress.beat()  # waiting for the others is not a hang
                time.sleep(PHASE_POLL_SECONDS)
                if time.monotonic() - last_recovery > REQUEUE_SECONDS:
                    self.reconcile(study, set(keys))
                    last_recovery = time.monotonic()
            else:
                return

    def reconcile(self, study: optuna.Study, keys: set[str] | None) -> None:
        reconcile(study, keys, self.runs_dir, mlflow.MlflowClient(self.settings.tracking_uri))

    def queue_lost_points(self, study: optuna.Study, keys: set[str], todo: list[str]) -> None:
        """A lost point not queued yet (its settler died, or Optuna's stale check failed it) is queued here
        rather than left to the grid sampler, which has visited it and would draw it only by chance."""
        by_point = trials_by_point(study)
        if any(point_status(by_point[k]) == "lost" for k in todo):
            self.reconcile(study, keys)

    def run_search(self, study: optuna.Study) -> None:
        objective = self.objective(study, None)
        budget = self.experiment.spec.trials
        while searched(study) < budget:
            study.optimize(objective, n_trials=1, catch=(TrialFailed,))

    def wait_until_settled(self, study: optuna.Study) -> None:
        """Matched points need every result of the first phase, so wait for the other workers."""
        while live_trials(study):
            self.reconcile(study, None)
            progress.beat()  # waiting for the others is not a hang
            time.sleep(PHASE_POLL_SECONDS)

    def driver_alive(self) -> bool:
        """An orphaned worker (its driver killed) has nobody to report to: it takes no more work. A cluster
        job never had one: it works until the sweep is done."""
        if self.settings.cluster_job:
            return True
        if self.driver_pid <= 0 or os.getppid() != self.parent_pid:  # orphaned: its parent is gone, so is the driver
            return False
        try:
            os.kill(self.driver_pid, 0)
        except ProcessLookupError:
            return False
        return True

    def wait_for_launch(self, study_name: str) -> bool:
        """The driver starts its workers before its MLflow set-up and marks the study when that is done.
        False for a cluster job whose launch is over: a later launch started (the user re-ran the command),
        or its driver never marked it (killed first); such a job has nothing to do."""
        if not self.settings.launch:
            return True
        study_id = self.storage.get_study_id_from_name(study_name)
        started = time.monotonic()
        while (attrs := self.storage.get_study_user_attrs(study_id)).get(LAUNCH_ATTR) != self.settings.launch:
            if not self.driver_alive():
                raise SystemExit(f"the sweep driver (pid {self.driver_pid}) exited before its launch began")
            if self.settings.cluster_job:
                if attrs.get(LAUNCH_NEXT) not in (None, self.settings.launch):
                    print("a later launch of this sweep has started: this job of an earlier one stands down", flush=True)
                    return False
                if time.monotonic() - started > CLUSTER_LAUNCH_WAIT_SECONDS:
                    print(f"this job's launch was not marked within {CLUSTER_LAUNCH_WAIT_SECONDS:.0f} s (its driver "
                          "was stopped before it finished setting up): nothing to do", flush=True)
                    return False
            time.sleep(CLUSTER_LAUNCH_POLL_SECONDS if self.settings.cluster_job else LAUNCH_POLL_SECONDS)
        return True

    def run(self) -> None:
        progress.beat()  # imported and started: the watchdog's clock restarts here
        first, matched = study_names(self.experiment.name)
        if not self.wait_for_launch(first):
            return
        if self.experiment.spec.mode == "search":
            self.run_search(self.load(first, optuna.samplers.TPESampler()))
            return
        points = self.experiment.points()
        grid = self.load(first, grid_sampler(points))
        self.run_grid(grid, points)
        if not any(arm.match for arm in self.experiment.arms):
            return
        self.wait_until_settled(grid)
        matched_points = self.experiment.matched_points(finished_runs(self.experiment.name, grid.study_name, self.settings.tracking_uri))
        if matched_points:
            self.run_grid(self.load(matched, grid_sampler(matched_points)), matched_points)


def main(argv: list[str]) -> int:
    # SIGTERM: a training step finishes and checkpoints, anything else stops at once; either way the
    # MLflow run ends KILLED and the Optuna trial FAIL, and the next attempt resumes it in the same run
    stop_request.install()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    Worker(WorkerSettings(**json.loads(argv[0]))).run()
    return 0


def settings_json(settings: WorkerSettings) -> str:
    return json.dumps(asdict(settings))


if __name__ == "__main__":
    exit_now(main(sys.argv[1:]))
