"""How SlurmJob reads scontrol and uses scancel, with shell-script shims in place of SLURM's commands (no
cluster needed): each shim records its arguments, one line a call, and answers what the test set."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from study.sweep import slurm
from study.sweep.slurm import SlurmJob, job_state

UNREACHABLE = "slurm_load_jobs error: Unable to contact slurm controller (connect failure)"
SOCKET_TIMEOUT = "slurm_load_jobs error: Socket timed out on send/recv operation"
FORGOTTEN = "slurm_load_jobs error: Invalid job id specified"

SHIM = """#!/bin/sh
echo "$*" >> {folder}/{name}.log
cat {folder}/{name}.out 2>/dev/null
cat {folder}/{name}.err >&2 2>/dev/null
exit $(cat {folder}/{name}.rc 2>/dev/null || echo 0)
"""


class Shims:
    """`scontrol` and `scancel` first on PATH; answer() sets what a command says next."""

    def __init__(self, folder: Path):
        self.folder = folder
        for name in ("scontrol", "scancel"):
            script = folder / name
            script.write_text(SHIM.format(folder=folder, name=name))
            script.chmod(0o755)

    def answer(self, name: str, stdout: str = "", stderr: str = "", code: int = 0) -> None:
        for suffix, text in (("out", stdout), ("err", stderr), ("rc", str(code))):
            (self.folder / f"{name}.{suffix}").write_text(text)

    def calls(self, name: str) -> list[str]:
        log = self.folder / f"{name}.log"
        return log.read_text().splitlines() if log.exists() else []


@pytest.fixture
def shims(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Shims:
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    return Shims(tmp_path)


def show_job(state: str, exit_code: str = "0:0", task: int = 0) -> str:
    """A `scontrol show job -o` line of array task 14_<task>, as SLURM 23 prints it."""
    reason = "JobArrayTaskLimit" if state == "PENDING" else "None"
    return (f"JobId={14 + task} ArrayJobId=14 ArrayTaskId={task} JobName=tiny_sweep UserId=ci(1000) "
            f"GroupId=ci(1000) MCS_label=N/A Priority=4294901757 Nice=0 Account=(null) QOS=normal "
            f"JobState={state} Reason={reason} Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 "
            f"ExitCode={exit_code} RunTime=00:00:05 TimeLimit=00:10:00 TimeMin=N/A "
            f"SubmitTime=2024-05-02T10:00:00 EligibleTime=2024-05-02T10:00:00 Partition=debug "
            f"AllocNode:Sid=node1:4242 NodeList=node1 BatchHost=node1 NumNodes=1 NumCPUs=1 NumTasks=1 "
            f"CPUs/Task=1 ReqB:S:C:T=0:0:*:* TRES=cpu=1,mem=1G,node=1,billing=1 "
            f"Command=/runs/slurm/tiny_sweep/submission_file.sh WorkDir=/runs StdIn=/dev/null Power=\n")


@pytest.mark.parametrize("error", [UNREACHABLE, SOCKET_TIMEOUT], ids=["connect-failure", "socket-timeout"])
def test_scontrol_failure_is_unknown_not_finished(shims: Shims, error: str) -> None:
    shims.answer("scontrol", stderr=error, code=1)
    assert job_state("14_0") == ("UNKNOWN", None)
    assert SlurmJob("14_0").poll() is None  # still running as far as anyone knows: look again later


@pytest.mark.parametrize("state, exit_code, expected", [("COMPLETED", "0:0", 0), ("FAILED", "1:0", 1)])
def test_ended_job_returns_its_exit_code_through_a_blip(shims: Shims, state: str, exit_code: str,
                                                        expected: int) -> None:
    job = SlurmJob("14_0")
    shims.answer("scontrol", stdout=show_job("RUNNING"))
    assert job.poll() is None
    shims.answer("scontrol", stderr=UNREACHABLE, code=1)
    assert job.poll() is None
    shims.answer("scontrol", stdout=show_job(state, exit_code))
    assert job_state("14_0") == (state, expected)
    assert job.poll() == expected
    assert shims.calls("scontrol")[0] == "show job -o 14_0"


def test_job_forgotten_while_running_counts_as_failed(shims: Shims, capsys: pytest.CaptureFixture) -> None:
    job = SlurmJob("14_0")
    shims.answer("scontrol", stdout=show_job("RUNNING"))
    assert job.poll() is None
    shims.answer("scontrol", stderr=FORGOTTEN, code=1)
    assert job_state("14_0") == ("GONE", None)
    assert job.poll() not in (None, 0)  # its end was never seen: the exit code is unknown
    assert "14_0" in capsys.readouterr().err


def test_gives_up_after_long_run_of_scontrol_failures(shims: Shims, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(slurm, "GIVE_UP_SECONDS", 0.2)
    shims.answer("scontrol", stderr=UNREACHABLE, code=1)
    job = SlurmJob("14_0")
    assert job.poll() is None
    time.sleep(0.3)
    assert job.poll() not in (None, 0)
    err = capsys.readouterr().err
    assert "14_0" in err and "Unable to contact slurm controller" in err


@pytest.mark.parametrize("state, task, scancel", [("PENDING", 1, "14_1"),
                                                  ("RUNNING", 0, "--signal=TERM --full 14_0")])
def test_terminate_cancels_pending_task_and_signals_running_one(shims: Shims, state: str, task: int,
                                                                scancel: str) -> None:
    shims.answer("scontrol", stdout=show_job(state, task=task))
    SlurmJob(f"14_{task}").terminate()
    assert shims.calls("scancel") == [scancel]


JOB_STARTS_UNDER_SUBMITIT = """
import importlib.abc, json, os, signal, sys
signal.signal(signal.SIGTERM, lambda signum, frame: print("Bypassing signal SIGTERM"))  # submitit's handler
class SigtermAtWorkerImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "study.sweep.worker":  # scancel lands while the job imports its heavy modules
            os.kill(os.getpid(), signal.SIGTERM)
        return None
sys.meta_path.insert(0, SigtermAtWorkerImport())
from study.sweep.slurm_job import WorkerJob
WorkerJob()(json.dumps({"experiment": "never-read.toml"}))
print("the worker ran")
"""


def test_a_sigterm_while_the_job_imports_stops_it_instead_of_being_ignored(tmp_path: Path):
    """submitit's own handler ignores SIGTERM; the job's handlers are in place before its imports, so a job
    cancelled in its first seconds stops (exit 143) instead of going on to take a trial."""
    env = {**os.environ, "SLURM_JOB_ID": "77", "PYTHONPATH": str(Path(__file__).parents[1])}
    result = subprocess.run([sys.executable, "-c", JOB_STARTS_UNDER_SUBMITIT], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 143, result.stdout + result.stderr
    assert "stopped by SIGTERM" in result.stdout and "Bypassing" not in result.stdout
