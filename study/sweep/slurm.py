"""Sweep workers as a SLURM job array, submitted through submitit (`python sweep.py EXP --launcher slurm`).

Each array task is one worker (study/sweep/slurm_job.py): it joins the launch's Optuna storage and MLflow
tracking, as a `--join`ed worker on another machine does, and takes points until the sweep is done. The
driver watches the jobs as it watches local workers (`SlurmJob` answers the same poll/wait/kill), or
leaves them running (`--detach`); `--status` then shows the jobs and closes the launch once they are gone.

Compute nodes must reach the storage, the tracking store and `runs/` (checkpoints, trial folders): a file
on a local file system, or a server at 127.0.0.1, is refused before anything is submitted, unless every
node of the partition is this machine.
"""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple

from study.runtime.distributed import SLURM_TASKS_ENV
from study.sweep.experiment_file import Experiment, SlurmSpec
from study.sweep.shared_files import unshared

ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
         "PREEMPTED"}  # a preempted job that SLURM requeues shows REQUEUED, then PENDING
NOT_STARTED = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED"}  # held jobs are PENDING too
GIVE_UP_SECONDS = 600.0  # scontrol failing this long in a row: poll() stops waiting and counts the job lost
LOST_CODE = 1  # return code of a job whose end SLURM no longer reports (or cannot be asked about)


class SlurmError(RuntimeError):
    """A SLURM launch that cannot start (no sbatch, a store the nodes cannot reach, a refused submission)."""


def partition_nodes(partition: str) -> set[str]:
    """The short host names of the partition's nodes (the default partition when empty)."""
    command = ["sinfo", "-h", "-N", "-o", "%N"] + (["-p", partition] if partition else [])
    try:
        out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise SlurmError(f"cannot list the nodes of SLURM partition {partition or '(default)'}: {exc}") from None
    return {line.split(".")[0] for line in out.split()}


def check_reachable(storage: str | None, journal: Path, tracking_uri: str, runs_dir: Path, partition: str) -> None:
    """Refuses stores the partition's nodes cannot share, unless every node is this machine."""
    nodes = partition_nodes(partition)
    if nodes <= {socket.gethostname().split(".")[0]}:
        return  # a one-node cluster on this machine: its files and 127.0.0.1 are the same for every job
    problems = unshared(storage, journal, tracking_uri, runs_dir)
    if problems:
        raise SlurmError("the compute nodes (" + ", ".join(sorted(nodes)[:5]) + (", ..." if len(nodes) > 5 else "")
                         + ") cannot share what this launch would use: " + "; ".join(problems) + ". Use "
                         "--storage postgresql://USER@DB-HOST/optuna and --tracking-uri http://MLFLOW-HOST:5000 "
                         "(servers every node reaches), and run from a folder on a shared file system")


def trial_ranks(experiment: Experiment) -> int:
    """The most processes (train.processes) any trial of the experiment runs: the SLURM tasks of a worker job."""
    points = experiment.points() if experiment.spec.mode == "grid" else []
    return max(experiment.config(p).train.processes for p in [None, *points])


def tasks_per_node(spec: SlurmSpec, ranks: int) -> int:
    """SLURM tasks per node of a worker job whose trials run `ranks` processes (train.processes)."""
    if ranks % spec.nodes_per_worker:
        raise SlurmError(f"train.processes = {ranks} does not split evenly over nodes_per_worker = "
                         f"{spec.nodes_per_worker}: make it a multiple")
    return ranks // spec.nodes_per_worker


def submit(spec: SlurmSpec, folder: Path, job_name: str, settings: list[str], ranks: int = 1) -> list[str]:
    """One array job, a task per worker settings (JSON); returns the tasks' job ids ("123_0", ...).

    Each job holds `ranks` SLURM tasks (the most train.processes of the sweep's trials) but starts the
    worker as one of them (srun --ntasks=1); a trial with several processes starts its ranks as a job
    step over the job's tasks (study/runtime/distributed.py, launch)."""
    import submitit  # the optional `slurm` extra: only the launcher needs it

    from study.sweep.slurm_job import WorkerJob
    executor = submitit.SlurmExecutor(folder=folder / "%j")
    root = Path(__file__).resolve().parents[2]  # the folder holding `study`: the jobs run this checkout
    options = {"requeue": True, **spec.sbatch}
    setup = [f"export PYTHONPATH={root}${{PYTHONPATH:+:$PYTHONPATH}}"]
    if ranks > 1:  # inside the worker's own step SLURM_NTASKS is 1: the job's count is handed down here
        setup.append(f"export {SLURM_TASKS_ENV}=$SLURM_NTASKS")
    executor.update_parameters(
        job_name=job_name, time=spec.time_minutes, signal_delay_s=spec.signal_seconds,
        cpus_per_task=spec.cpus_per_worker, array_parallelism=len(settings), additional_parameters=options,
        setup=setup, nodes=spec.nodes_per_worker, ntasks_per_node=tasks_per_node(spec, ranks),
        **({"srun_args": ["--ntasks=1"]} if ranks > 1 else {}),
        **{k: v for k, v in {"partition": spec.partition, "account": spec.account, "qos": spec.qos,
                             "gpus_per_node": spec.gpus_per_worker, "mem": f"{spec.mem_gb}GB" if spec.mem_gb else ""}.items()
           if v})
    try:
        jobs = executor.map_array(WorkerJob(), settings)
    except (OSError, subprocess.SubprocessError, submitit.core.utils.FailedJobError) as exc:
        raise SlurmError(f"sbatch refused the worker jobs: {exc}") from None
    return [job.job_id for job in jobs]


class JobQuery(NamedTuple):
    state: str  # SLURM's JobState; GONE once SLURM has forgotten the job, UNKNOWN when scontrol failed
    code: int | None
    error: str = ""  # why the state is UNKNOWN


def query_job(job_id: str) -> JobQuery:
    """The job's state from `scontrol show job`. Only "Invalid job id" means SLURM forgot the job (MinJobAge);
    any other failure (controller unreachable, a timeout, no scontrol) says nothing about the job."""
    try:
        out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return JobQuery("UNKNOWN", None, "scontrol did not answer within 30 s")
    except (OSError, subprocess.SubprocessError) as exc:
        return JobQuery("UNKNOWN", None, f"cannot run scontrol: {exc}")
    if out.returncode:
        if "Invalid job id specified" in out.stderr:
            return JobQuery("GONE", None)
        return JobQuery("UNKNOWN", None, out.stderr.strip() or f"scontrol exited with code {out.returncode}")
    lines = out.stdout.splitlines()
    fields = dict(re.findall(r"(\w+)=(\S+)", lines[0])) if lines else {}
    if "JobState" not in fields:
        return JobQuery("UNKNOWN", None, f"no JobState in scontrol's answer {out.stdout.strip()[:200]!r}")
    code = fields.get("ExitCode", "0:0").split(":")[0]
    return JobQuery(fields["JobState"], int(code) if code.isdigit() else None)


def job_state(job_id: str) -> tuple[str, int | None]:
    """(state, exit code) from scontrol: GONE once SLURM has forgotten the job, UNKNOWN when scontrol failed."""
    state, code, _ = query_job(job_id)
    return state, code


class SlurmJob:
    """A worker job seen as the driver sees a worker process: poll(), wait(), terminate(), kill()."""

    def __init__(self, job_id: str):
        self.job_id = self.pid = job_id
        self.returncode: int | None = None
        self.progress = None  # no hang watchdog: the job's time limit bounds it
        self.state = ""  # the last state SLURM gave (empty before one)
        self._unknown_since: float | None = None  # start of the current run of scontrol failures

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._return_code(query_job(self.job_id))
        return self.returncode

    def _return_code(self, query: JobQuery) -> int | None:
        """The job's return code once the query shows it ended (or lost), else None."""
        if query.state == "UNKNOWN":
            return self._unanswered(query.error)
        self._unknown_since = None
        if query.state == "GONE":
            return self._forgotten()
        self.state = query.state
        if query.state not in ENDED:
            return None
        return (query.code or 0) if query.state == "COMPLETED" else (query.code or 1)

    def _unanswered(self, error: str) -> int | None:
        """Still running as far as anyone knows, until scontrol has failed for GIVE_UP_SECONDS in a row."""
        now = time.monotonic()
        if self._unknown_since is None:
            self._unknown_since = now
        if now - self._unknown_since < GIVE_UP_SECONDS:
            return None
        _warn(f"SLURM job {self.job_id}: scontrol has failed for {now - self._unknown_since:.0f} s in a row "
              f"(last error: {error}); the job is taken as lost")
        return LOST_CODE

    def _forgotten(self) -> int:
        """poll() records any end it sees, so a job gone from SLURM here ended unseen: its exit code is lost."""
        _warn(f"SLURM job {self.job_id}: SLURM has forgotten the job, last seen {self.state or 'never'}; "
              "its exit code is unknown, so it counts as failed")
        return LOST_CODE

    def wait(self, timeout: float | None = None) -> int:
        deadline = time.monotonic() + (timeout if timeout is not None else float("inf"))
        while self.poll() is None:
            if time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"SLURM job {self.job_id}", timeout)
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
        return self.returncode

    def terminate(self) -> None:
        """SIGTERM to a running job: its trial checkpoints at its next step. A task not started yet would
        miss the signal and start later with nobody watching; with nothing to checkpoint, it is cancelled."""
        self.poll()
        if self.state in NOT_STARTED:
            self.kill()
        else:
            subprocess.run(["scancel", "--signal=TERM", "--full", self.job_id], capture_output=True, timeout=30)

    def kill(self) -> None:
        subprocess.run(["scancel", self.job_id], capture_output=True, timeout=30)


def _warn(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def launch_file(runs_dir: Path, experiment: Experiment) -> Path:
    return runs_dir / "slurm" / experiment.name / "launch.json"


def record_launch(path: Path, parent_run_id: str, job_ids: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"parent_run_id": parent_run_id, "jobs": job_ids}))
    os.replace(tmp, path)


def recorded_launch(path: Path) -> tuple[str, list[str]] | None:
    """(parent run id, job ids) of the latest SLURM launch of this experiment from this folder."""
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    return saved["parent_run_id"], saved["jobs"]


def describe(spec: SlurmSpec) -> str:
    return ", ".join(f"{k}={v}" for k, v in asdict(spec).items() if v)
