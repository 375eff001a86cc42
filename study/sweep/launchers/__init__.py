"""Where a sweep's workers run. A launcher starts workers, one per seat, and hands back handles that the
driver polls, waits on, stops and replaces alike (`poll`, `wait`, `terminate`, `kill`, `returncode`,
`progress`). The driver holds no launcher-specific branch: another launcher is one more module here
and one more entry in LAUNCHERS.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

from study.runtime.progress import Watch
from study.sweep.launchers.local import LocalLauncher
from study.sweep.launchers.slurm import SlurmLauncher
from study.sweep.worker import WorkerSettings


class WorkerHandle(Protocol):
    pid: int | str
    returncode: int | None
    progress: Watch | None  # how long the worker has made no progress; None: no hang watchdog

    def poll(self) -> int | None: ...
    def wait(self, timeout: float | None = None) -> int: ...
    def terminate(self) -> None: ...
    def kill(self) -> None: ...


class Launcher(Protocol):
    log_dir: Path  # where the workers' output goes
    detach: bool  # the driver may leave once the workers started (`--status` closes the launch)

    def check(self) -> None:
        """Refuses, before anything is created, a launch whose workers could not reach the stores."""

    def start(self, settings: WorkerSettings, seats: list[dict]) -> list[WorkerHandle]:
        """One worker per seat (a seat: the placement overrides of one worker)."""

    def started(self, parent_run_id: str, workers: list[WorkerHandle]) -> None:
        """The launch is marked: record or report the workers as this launcher does."""


LAUNCHERS = {"local": LocalLauncher, "slurm": SlurmLauncher}
