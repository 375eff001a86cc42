"""Child processes forked from a server that has imported torch, torchaudio, MLflow and Optuna once.

Importing them takes 3-5 s of a 2-core machine; a sweep worker, a feature-extraction process and each
replacement of a lost worker would pay it again. multiprocessing's forkserver imports them once, in a
fresh process that has run no torch op (a child forked after its parent's OpenMP threads ran hangs when
it sets its own thread count), and forks every child from it.

One server serves a whole process, whoever starts it first, so its preload list is this one, for every
caller: third-party packages only. The project's own modules are imported in each child, after the
child has its environment: some read it at import (study.sweep.timing), and the server's environment is
that of the moment it started. (A driver started as a script, `python sweep.py`, has its script imported in
each child first, under the server's environment: the driver's own, whose SWEEP_ settings its workers
get too.)

A child of the server that starts children of its own (a sweep driver forked from it, as the tests start
theirs) has them forked by the same server instead of starting a second one that imports everything again.
"""
from __future__ import annotations

import ctypes
import importlib
import multiprocessing
import multiprocessing.context
import multiprocessing.forkserver
import os
import signal
import subprocess
import sys
import traceback
from pathlib import Path

# torch._dynamo: a process's first optimizer imports it (a second of a core), each worker again otherwise;
# MLflow's SQLAlchemy store (with SQLAlchemy and Alembic): about 0.7 s of a core in each child that opens
# a SQLite tracking store, which sweep workers and drivers all do
PRELOAD = ["torch", "torch._dynamo", "torchaudio", "mlflow", "mlflow.store.tracking.sqlalchemy_store", "optuna"]


def available() -> bool:
    return "forkserver" in multiprocessing.get_all_start_methods()


def context() -> multiprocessing.context.BaseContext:
    """The forkserver context with the shared preload list (spawn where there is no forkserver)."""
    if not available():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    _reuse_the_server_that_forked_this_process()
    return ctx


def warm() -> None:
    """Starts the server now without waiting for its imports, so that they overlap the caller's next work
    (a sweep driver's data preparation) instead of delaying its first child."""
    if available():
        context()
        multiprocessing.forkserver._forkserver.ensure_running()


def _reuse_the_server_that_forked_this_process() -> None:
    """In a child of the server, multiprocessing knows the server's address and holds a handle that keeps it
    alive, but not its pid, and would start a server of its own for the child's children. Here it is told
    that the one it has is running. These are CPython internals, read for 3.11 (the version the lock file
    is tested with): on other versions the child starts its own server as before."""
    server = multiprocessing.forkserver._forkserver
    if sys.version_info[:2] != (3, 11) or "ensure_running" in vars(server):
        return
    if (getattr(server, "_forkserver_pid", 0) is None and getattr(server, "_forkserver_address", None)
            and getattr(server, "_forkserver_alive_fd", None) is not None):
        server.ensure_running = multiprocessing.resource_tracker.ensure_running  # the parent's tracker


class ForkedProcess:
    """`python -m MODULE ARGS...` as a child of the forkserver: `MODULE.main(args)` with `env` as its whole
    environment, run in `cwd` (default: the caller's), stdout appended to `log` and stderr to `err_log`
    (default: `log`). It offers the part of subprocess.Popen that the sweep driver uses (pid, returncode,
    poll, wait, send_signal, terminate, kill)."""

    def __init__(self, module: str, args: list[str], log: Path, env: dict[str, str], name: str,
                 cwd: Path | None = None, err_log: Path | None = None):
        outputs = (str(log), str(err_log or log))
        self._process = context().Process(target=_main_of, args=(module, args, outputs, env, name, cwd), name=name)
        self._process.start()
        self.pid = self._process.pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._process.exitcode
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self.poll() is None:
            raise subprocess.TimeoutExpired(self._process.name, timeout)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)
        self.send_signal(signal.SIGCONT)  # a stopped process runs its SIGTERM handler only once continued

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _main_of(module: str, args: list[str], outputs: tuple[str, str], env: dict[str, str], name: str,
             cwd: Path | None) -> None:
    os.environ.clear()
    os.environ.update(env)
    if cwd is not None:
        os.chdir(cwd)
    for target, path in zip((1, 2), outputs):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, target)
        os.close(fd)
    _set_process_name(name)
    try:
        code = importlib.import_module(module).main(args)
    except KeyboardInterrupt:  # end as `python -m` does: a traceback, then death by SIGINT
        traceback.print_exc()
        sys.stderr.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        raise
    from study.sweep.process import exit_now  # imported here: it brings MLflow, and the env is set
    exit_now(code or 0)


def _set_process_name(name: str) -> None:
    """What `ps -o comm` and /proc/PID/comm show (Linux, 15 characters): every child's command line is the
    forkserver's."""
    try:
        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)  # 15: PR_SET_NAME
    except (OSError, AttributeError):
        pass
