"""Proof of life for the sweep driver's watchdog: a worker touches its progress file as it works.

A sweep worker gets the file's path in $STUDY_PROGRESS_FILE; training steps, decoding batches, waits
on another trial and the data preparation before them call `beat()`, which touches it at most every
PROGRESS_BEAT_SECONDS. A worker whose file has not moved for the driver's `--hang-minutes` made no
progress (stopped, deadlocked, stuck on a dead file system): the driver kills and replaces it. Outside
a sweep `beat()` does nothing.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from study.sweep.timing import PROGRESS_BEAT_SECONDS

ENV = "STUDY_PROGRESS_FILE"
_last_beat = 0.0


def beat() -> None:
    global _last_beat
    path = os.environ.get(ENV)
    now = time.monotonic()
    if not path or now - _last_beat < PROGRESS_BEAT_SECONDS:
        return
    _last_beat = now
    try:
        Path(path).touch()
    except OSError:  # a missed beat is harmless; the next one may land
        pass


class Watch:
    """How long a progress file has not moved, by the watcher's own clock: the file's mtime is only
    compared with its previous value, never with this machine's time (a file server's clock may differ)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._seen: int | None = None
        self._since = time.monotonic()

    def idle_seconds(self) -> float:
        try:
            mtime = self.path.stat().st_mtime_ns
        except OSError:
            mtime = None
        now = time.monotonic()
        if mtime != self._seen:
            self._seen, self._since = mtime, now
        return now - self._since
