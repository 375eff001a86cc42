"""The sweep's waits in one place. Each can be shortened from the environment (`SWEEP_<NAME>`, in
seconds), which subprocesses and cluster jobs inherit: the tests play out an outage or a lost worker
in seconds that way. The waits that must agree are checked together when this module is imported.

The one rule: a live trial never looks lost after an outage its storage calls ride through. During an
outage nothing records a heartbeat; once the storage is back, the heartbeat's own retry may still sleep
its longest delay, and a call that gave up beats again only a heartbeat later. So a trial is stale
only after RETRY_SECONDS + the longest delay + 2 heartbeats without one (300 s by default).
"""
from __future__ import annotations

import os


class TimingError(ValueError):
    """A wait set from the environment that is not a number, or that breaks the rule above."""


def _seconds(name: str, default: float) -> float:
    raw = os.environ.get(f"SWEEP_{name}")
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise TimingError(f"SWEEP_{name}={raw!r}: expected a number of seconds") from None
    if value <= 0:
        raise TimingError(f"SWEEP_{name}={raw!r}: expected more than 0 seconds")
    return value


def backoff(total: float) -> tuple[float, ...]:
    """Delays of 1, 2, 4, 8, 15, then 30 s, scaled so that they add up to `total` (180 s: 5 x 30 at the end)."""
    delays, spent = [], 0.0
    for delay in (1, 2, 4, 8, 15):
        delays.append(delay)
        spent += delay
    while spent < total:
        delays.append(30)
        spent += 30
    scale = total / spent
    return tuple(d * scale for d in delays)


def stale_after(retry_seconds: float, heartbeat_seconds: float) -> float:
    """The least heartbeat age at which a trial may be called lost (the rule in the module's docstring)."""
    return retry_seconds + max(backoff(retry_seconds)) + 2 * heartbeat_seconds


HEARTBEAT_SECONDS = _seconds("HEARTBEAT_SECONDS", 20)  # how often a running trial says it is alive
RETRY_SECONDS = _seconds("RETRY_SECONDS", 180)  # the longest storage outage that calls ride through
RETRY_DELAYS = backoff(RETRY_SECONDS)
STALE_SECONDS = _seconds("STALE_SECONDS", max(300.0, stale_after(RETRY_SECONDS, HEARTBEAT_SECONDS)))
REQUEUE_SECONDS = _seconds("REQUEUE_SECONDS", 30)  # how often lost trials are looked for during a launch
PHASE_POLL_SECONDS = _seconds("PHASE_POLL_SECONDS", 3)  # a worker waiting for others' trials looks again
PROGRESS_BEAT_SECONDS = _seconds("PROGRESS_BEAT_SECONDS", 5)  # the least time between two touches of a progress file
# The least time a training step takes (default: none). A test that needs trials to stay mid-training
# while it kills, stops or joins them sets it, instead of paying for many epochs of real work.
MIN_STEP_SECONDS = _seconds("MIN_STEP_SECONDS", 0)

if STALE_SECONDS <= stale_after(RETRY_SECONDS, HEARTBEAT_SECONDS):
    raise TimingError(
        f"SWEEP_STALE_SECONDS={STALE_SECONDS:g} would call live trials lost after an outage the retries ride "
        f"through: it must exceed SWEEP_RETRY_SECONDS ({RETRY_SECONDS:g}) + the longest retry delay "
        f"({max(RETRY_DELAYS):g}) + 2 x SWEEP_HEARTBEAT_SECONDS ({HEARTBEAT_SECONDS:g}) = "
        f"{stale_after(RETRY_SECONDS, HEARTBEAT_SECONDS):g}")
