"""Optuna storage calls that ride through an outage: a database restart, a network blip, an NFS hiccup.

Every call on an RDB storage (ask, tell, attributes, the driver's polls, the heartbeats, and the private
methods Optuna's cache calls directly) is retried on a transient error with a capped backoff,
RETRY_SECONDS in all (3 minutes; study/sweep/timing.py), each retry logged on stderr; past that the error
is raised as before. A state change that a retry finds already made (its first attempt committed, the
answer was lost) counts as done. Two lost answers cannot be told apart from another process's work and
leave a RUNNING trial that nobody took up: a pop (WAITING -> RUNNING) and an insert; study/sweep/recovery.py
settles those once they are STALE_SECONDS old. RDB connections are checked out
with `pool_pre_ping`, so a pool that outlived a restart reconnects instead of failing once per
stale connection. The journal file is not wrapped: a retried append after a partial write would
leave a torn record inside the file (a torn last record is repaired when the journal is opened).
"""
from __future__ import annotations

import functools
import sys
import time
from typing import Any, Callable

import optuna
from optuna.storages import BaseStorage, RDBStorage
from optuna.trial import TrialState
from sqlalchemy.exc import InterfaceError, OperationalError

from study.sweep.timing import RETRY_DELAYS  # 1 + 2 + 4 + 8 + 15 + 5 x 30 = 180 s by default

# What an outage raises: Optuna wraps the database's errors inside a session; connecting (refused, the
# server closed the connection) raises SQLAlchemy's own. Not retried: integrity errors and the like.
TRANSIENT = (optuna.exceptions.StorageInternalError, OperationalError, InterfaceError)
# The public methods, and the private ones Optuna's cache in front of every RDB study calls directly.
RETRIED_METHODS = tuple(name for name, value in vars(BaseStorage).items() if callable(value) and not name.startswith("_")) + (
    "record_heartbeat", "_get_stale_trial_ids", "_get_trials", "_create_new_trial", "_set_trial_param",
    "_get_best_trial_id")


def describe(exc: BaseException) -> str:
    """`Type: first line of the message` (200 characters at most): a database error's message runs to
    many lines of SQL and background links. Optuna's StorageInternalError says only "an exception is
    raised during the commit": the error under it (connection refused, server closed) is the news."""
    if isinstance(exc, optuna.exceptions.StorageInternalError) and exc.__cause__ is not None:
        exc = exc.__cause__
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__


def _retrying(method: Callable, name: str, delays: tuple[float, ...]) -> Callable:
    @functools.wraps(method)
    def call(self, *args: Any, **kwargs: Any) -> Any:
        for attempt, delay in enumerate((*delays, None)):
            try:
                return method(self, *args, **kwargs)
            except optuna.exceptions.UpdateFinishedTrialError:
                if attempt and name == "set_trial_state_values" and _already(self, args, kwargs):
                    return True  # the first attempt committed; its answer was lost
                raise
            except TRANSIENT as exc:
                if delay is None:
                    raise
                print(f"storage: {name} failed ({describe(exc)}); "
                      f"retry {attempt + 1}/{len(delays)} in {delay} s", file=sys.stderr, flush=True)
                time.sleep(delay)
    return call


def _already(storage: BaseStorage, args: tuple, kwargs: dict) -> bool:
    """set_trial_state_values(trial_id, state, values): is the trial in that state already?"""
    trial_id = kwargs.get("trial_id", args[0] if args else None)
    state = kwargs.get("state", args[1] if len(args) > 1 else None)
    return isinstance(state, TrialState) and storage.get_trial(trial_id).state == state


@functools.cache
def with_retries(cls: type, delays: tuple[float, ...] = RETRY_DELAYS) -> type:
    """A subclass of storage class `cls` whose public methods retry transient errors."""
    methods = {name: _retrying(getattr(cls, name), name, delays) for name in RETRIED_METHODS if hasattr(cls, name)}
    return type(f"Retrying{cls.__name__}", (cls,), methods)


class ResilientRDBStorage(with_retries(RDBStorage)):
    """RDBStorage with retries, connections tested before use (Optuna sets pool_pre_ping for MySQL only;
    after a PostgreSQL restart every pooled connection is dead), and heartbeats that never stop: Optuna's
    heartbeat thread ends at its first error, and STALE_SECONDS later another process would fail a trial
    that is still training."""

    def __init__(self, url: str, **kwargs: Any):
        super().__init__(url, engine_kwargs={"pool_pre_ping": True}, **kwargs)

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            super().record_heartbeat(trial_id)
        except TRANSIENT as exc:
            print(f"storage: heartbeat of trial {trial_id} not recorded ({type(exc).__name__}); "
                  "beating on", file=sys.stderr, flush=True)
