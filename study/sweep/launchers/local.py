"""Workers as processes on this machine, each with its log and progress file under runs/logs/: forked from
a server that imported torch and MLflow once (study/runtime/forkserver.py), or `python -m study.sweep.worker`
where there is no forkserver."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from study.runtime import forkserver, progress
from study.sweep.experiment_file import Experiment
from study.sweep.worker import WorkerSettings, settings_json


class WorkerProcess(subprocess.Popen):
    """A worker process whose stop reaches it even when it is stopped (SIGSTOP, a job-control stop): the
    SIGTERM waits in a stopped process until a SIGCONT lets it run its handler."""

    def terminate(self) -> None:
        super().terminate()
        if self.poll() is None:
            self.send_signal(signal.SIGCONT)


class LocalLauncher:
    detach = False

    def __init__(self, experiment: Experiment, runs_dir: Path, **_: object):
        self.log_dir = Path(runs_dir) / "logs" / experiment.name
        self.seats_started = 0

    def check(self) -> None:
        pass  # this machine reaches whatever the driver reaches

    def start(self, settings: WorkerSettings, seats: list[dict]) -> list[subprocess.Popen]:
        return [self._start_one(replace(settings, placement=seat, driver_pid=os.getpid())) for seat in seats]

    def started(self, parent_run_id: str, workers: list) -> None:
        pass

    def _start_one(self, settings: WorkerSettings) -> subprocess.Popen:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        name = f"worker-{os.getpid()}-{self.seats_started}"
        self.seats_started += 1
        progress_file = self.log_dir / f"{name}.progress"
        log, env = self.log_dir / f"{name}.log", {**worker_env(), progress.ENV: str(progress_file)}
        if forkserver.available():
            proc = forkserver.ForkedProcess("study.sweep.worker", [settings_json(settings)], log, env, "sweep-worker")
        else:
            with open(log, "a") as out:
                proc = WorkerProcess([sys.executable, "-m", "study.sweep.worker", settings_json(settings)],
                                     stdout=out, stderr=subprocess.STDOUT, env=env)
        proc.progress = progress.Watch(progress_file)  # the watchdog's clock starts now
        return proc


def worker_env() -> dict[str, str]:
    """This checkout first on the path, so workers run the same code whatever the working directory."""
    root = str(Path(__file__).resolve().parents[3])  # the folder holding `study`
    return {**os.environ, "PYTHONPATH": os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])}
