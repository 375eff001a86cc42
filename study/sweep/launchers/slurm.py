"""Workers as a SLURM job array (study/sweep/slurm.py has the SLURM plumbing; docs/cluster.md)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import mlflow
import optuna

from study.sweep import slurm
from study.sweep.experiment_file import Experiment, SlurmSpec
from study.sweep.launch_check import check_launch, summary
from study.sweep.optuna_storage import journal_path, open_storage, study_names
from study.sweep.parent_run import close_launch, launch_counts
from study.sweep.worker import WorkerSettings, settings_json
from study.tracking.mlflow_runs import run_status


class SlurmLauncher:
    def __init__(self, experiment: Experiment, runs_dir: Path, storage: str | None = None, tracking_uri: str = "",
                 spec: SlurmSpec | None = None, detach: bool = False, **_: object):
        self.experiment, self.runs_dir, self.storage, self.tracking_uri = experiment, Path(runs_dir), storage, tracking_uri
        self.spec, self.detach = spec or SlurmSpec(), detach
        self.log_dir = self.runs_dir / "slurm" / experiment.name

    def check(self) -> None:
        slurm.check_reachable(self.storage, journal_path(self.runs_dir, self.experiment.name), self.tracking_uri,
                              self.runs_dir, self.spec.partition)

    def start(self, settings: WorkerSettings, seats: list[dict]) -> list[slurm.SlurmJob]:
        """A job per seat; each job's placement comes from [sweep.slurm], not from this machine's cores."""
        spec = self.spec
        placement = {"train.threads": spec.cpus_per_worker, **({"train.device": "cuda"} if spec.gpus_per_worker else {})}
        job = replace(settings, experiment=str(Path(settings.experiment).resolve()), runs_dir=str(self.runs_dir.resolve()),
                      placement=placement, cluster_job=True, driver_pid=0)
        ids = slurm.submit(spec, self.log_dir.resolve(), f"sweep-{self.experiment.name}", [settings_json(job)] * len(seats),
                           ranks=slurm.trial_ranks(self.experiment))
        return [slurm.SlurmJob(job_id) for job_id in ids]

    def started(self, parent_run_id: str, workers: list[slurm.SlurmJob]) -> None:
        slurm.record_launch(slurm.launch_file(self.runs_dir, self.experiment), parent_run_id, [j.job_id for j in workers])
        print(f"SLURM jobs {', '.join(j.job_id for j in workers)} ({slurm.describe(self.spec)})", flush=True)


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
        client = mlflow.MlflowClient(tracking_uri)
        # A job's end state alone decides nothing: the last run of a job that finished its work can still end
        # FAILED (SLURM's time-limit signal reaching its batch script); the invariant decides, jobs are noted
        client.set_tag(parent, "slurm_jobs", ", ".join(f"{job} {state}" for job, state in states))
        done, failed = launch_counts(studies)
        bad_jobs = [f"job {job} {state}" for job, state in states if state not in ("COMPLETED", "GONE")]
        reason = "; ".join(filter(None, [", ".join(bad_jobs), summary(problems)])) if problems else ""
        close_launch(client, parent, done, failed, 0, reason)
    return states, problems
