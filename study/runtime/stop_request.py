"""SIGTERM as a polite stop: what a scheduler sends some time before it kills a job.

While a training loop runs (inside `polite()`), SIGTERM only sets a flag; the loop polls `requested()`
at every step boundary, writes a checkpoint there and raises `Stopped`, so the stop costs at most
the current step. Anywhere else (data preparation, the final evaluation) SIGTERM interrupts at once,
as Ctrl-C does: nothing there is worth a checkpoint. `Stopped` is a KeyboardInterrupt, so every path
that closes a run as KILLED on Ctrl-C does so here too, and the next launch resumes it in the same run.
"""
from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager

_polite_depth = 0  # > 0 while a loop that polls requested() runs
_requested = False
_unwinding = False  # a signal has raised KeyboardInterrupt: the process is closing its runs


class Stopped(KeyboardInterrupt):
    """Training stopped at a step boundary by SIGTERM, after writing its checkpoint."""


def install() -> None:
    """Handles SIGTERM and SIGINT in this process (the main thread: Python runs handlers there)."""
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


def on_signal(signum: int, frame: object) -> None:
    """SIGTERM inside a polite block: stop at the next step. Otherwise, and for SIGINT (Ctrl-C) anywhere:
    KeyboardInterrupt at once, and only once. Ctrl-C reaches a worker twice (SIGINT to the terminal's
    process group, then its driver's SIGTERM); a second KeyboardInterrupt would land inside the first's
    clean-up and leave its MLflow run RUNNING."""
    global _requested, _unwinding
    if _unwinding:
        return
    if _polite_depth and signum != signal.SIGINT:  # SIGTERM, or SIGUSR2 before a time limit
        if not _requested:  # a second SIGTERM (the driver passing the scheduler's on) changes nothing
            print(f"{signal.Signals(signum).name}: checkpointing at the end of this step, then stopping",
                  file=sys.stderr, flush=True)
        _requested = True
        return
    _requested = _unwinding = True
    raise KeyboardInterrupt(f"signal {signum}")


@contextmanager
def polite() -> Iterator[None]:
    """A block that polls `requested()` at its step boundaries; a stop requested before it began counts."""
    global _polite_depth
    _polite_depth += 1
    try:
        yield
    finally:
        _polite_depth -= 1


def requested() -> bool:
    return _requested


def clear() -> None:
    global _requested, _unwinding
    _requested = _unwinding = False
