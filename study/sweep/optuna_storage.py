"""Where a sweep's Optuna studies live, and how lost trials are found.

One machine: a journal file under runs/optuna/ (SQLite is not safe with parallel writers).
Several machines: PostgreSQL (or any SQLAlchemy URL) through RDBStorage, whose heartbeat (stamped by
the database's clock) says when a trial's worker vanished. The journal has no heartbeat, so each
worker touches a heartbeat file, whose age is read by the file system's clock. Either way each
worker records its host and pid on the trial: a RUNNING trial whose process is gone on this machine
is lost at once, one whose heartbeat is older than STALE_SECONDS wherever it ran, and one that nobody
took up (no worker recorded, no heartbeat) once it is that old. What is done about a lost trial is
study/sweep/recovery.py's.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, JournalStorage
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock
from optuna.trial import FrozenTrial, TrialState

from study.sweep.storage_retry import ResilientRDBStorage
from study.sweep.timing import HEARTBEAT_SECONDS, STALE_SECONDS

# Optuna flags heartbeats as experimental; they are what makes multi-machine sweeps recoverable.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

DIRECTIONS = ["minimize", "minimize"]  # dev/wer, params/total
LAUNCH_ATTR = "launch"  # the first study's user attribute: the token of the launch whose workers may begin
LAUNCH_FIRST_TRIAL = "launch_first_trial"  # each study's: the number of the launch's first trial
LAUNCH_NEXT = "launch_next"  # the first study's: the token of the latest launch to start its workers


def journal_path(runs_dir: Path, experiment: str) -> Path:
    """The default storage: a journal file per experiment."""
    return Path(runs_dir) / "optuna" / f"{experiment}.journal"


def open_storage(url: str | None, experiment: str, runs_dir: Path) -> BaseStorage:
    if not url:
        path = journal_path(runs_dir, experiment)
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = JournalFileSymlinkLock(str(path))
        repair_torn_journal(path, lock)
        return JournalStorage(MendingJournalBackend(path, lock))
    return ResilientRDBStorage(url, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=STALE_SECONDS)


@contextmanager
def _held(lock: JournalFileSymlinkLock) -> Iterator[None]:
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


def repair_torn_journal(path: Path, lock: JournalFileSymlinkLock) -> bool:
    """A write cut short (a full disk, a kill mid-write) leaves a last line without its end; the next
    append would run into it and every later read of the journal would fail. Under the journal's own
    lock, the torn tail is moved to `<journal>.torn` and cut off, with a message; True if it was."""
    if not _torn(path):  # the common case costs no lock
        return False
    with _held(lock):
        return _cut_torn_tail(path)


def _cut_torn_tail(path: Path) -> bool:
    """repair_torn_journal's work, for a caller that holds the journal's lock."""
    if not _torn(path):  # another process repaired it first
        return False
    data = path.read_bytes()
    good = data.rfind(b"\n") + 1  # the end of the last whole record
    with open(path.with_name(path.name + ".torn"), "ab") as torn:
        torn.write(data[good:])
    os.truncate(path, good)
    print(f"{path}: its last record was cut short ({len(data) - good} bytes, kept in {path.name}.torn); "
          "removed it, the records before it are intact", flush=True)
    return True


def _torn(path: Path) -> bool:
    """The file is not empty and does not end with a newline."""
    if not path.is_file() or path.stat().st_size == 0:
        return False
    with open(path, "rb") as journal:
        journal.seek(-1, os.SEEK_END)
        return journal.read(1) != b"\n"


class MendingJournalBackend(JournalFileBackend):
    """Optuna's journal file, proof against a record that a failed write left torn. A process that
    opened the journal before the tear would append its next record onto the torn line, and every later
    read would fail: here an append first cuts a torn tail off (under the lock it writes under), and a
    line where an older process did glue a record onto a torn one is read as that whole record.

    Log numbers count records, not lines (a line may hold none), and `_log_number_offset` maps a log
    number to the start of the line that holds it, as Optuna's does: JournalStorage asks for the logs
    from the number of records it has read."""

    def __init__(self, path: Path, lock: JournalFileSymlinkLock) -> None:
        super().__init__(str(path), lock)
        self._path = path
        self._reported: set[int] = set()  # offsets of the glued lines already reported

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        text = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs)
        with _held(self._lock):
            _cut_torn_tail(self._path)
            with open(self._path, "ab") as journal:
                journal.write(text.encode())
                journal.flush()
                os.fsync(journal.fileno())

    def read_logs(self, log_number_from: int) -> Iterator[dict[str, Any]]:
        number = log_number_from if log_number_from in self._log_number_offset else 0
        offset = self._log_number_offset[number]
        with open(self._path, "rb") as journal:
            end = os.fstat(journal.fileno()).st_size  # bytes appended meanwhile are read next time
            journal.seek(offset)
            for line in journal:
                if offset + len(line) > end or not line.endswith(b"\n"):
                    break  # an append under way, or a torn tail that the next append cuts off
                record = self._record(line, offset)
                offset += len(line)
                if record is not None:
                    if number >= log_number_from:
                        yield record
                    number += 1
                self._log_number_offset[number] = offset

    def _record(self, line: bytes, offset: int) -> dict[str, Any] | None:
        """The record on a line: the line itself, or the whole record at the end of a glued line."""
        try:
            return json.loads(line)
        except ValueError:  # not JSON, or not even text: bytes a crash left behind
            pass
        record, dropped = _record_at_end(line)
        if offset not in self._reported:
            self._reported.add(offset)
            kept = "kept the whole record after it" if record is not None else "no whole record on it"
            print(f"{self._path}: the line at byte {offset} holds a record cut short ({len(dropped)} bytes "
                  f"dropped: {dropped[:120]!r}); {kept}", file=sys.stderr, flush=True)
        return record


def _record_at_end(line: bytes) -> tuple[dict[str, Any] | None, bytes]:
    """The longest tail of `line` that is a whole JSON object, and the bytes before it. A torn prefix
    never closes its own braces, so no tail that begins inside it parses."""
    start = line.find(b"{")
    while start != -1:
        try:
            record = json.loads(line[start:])
            if isinstance(record, dict):
                return record, line[:start]
        except ValueError:
            pass
        start = line.find(b"{", start + 1)
    return None, line.rstrip(b"\n")


def study_names(experiment: str) -> tuple[str, str]:
    """The grid known up front, and the points matched to its results (filled in later)."""
    return experiment, f"{experiment}.matched"


def create_studies(storage: BaseStorage, experiment: str) -> list[optuna.Study]:
    return [optuna.create_study(study_name=name, storage=storage, directions=DIRECTIONS, load_if_exists=True)
            for name in study_names(experiment)]


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def heartbeat_path(runs_dir: Path, study: optuna.Study, trial_number: int) -> Path:
    return Path(runs_dir) / "optuna" / "heartbeats" / f"{study.study_name}-{trial_number}"


class Heartbeat:
    """Touches a file every HEARTBEAT_SECONDS while a trial runs (journal storage only)."""

    def __init__(self, path: Path):
        self.path, self._stop = path, threading.Event()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                self.path.touch()
            except OSError as exc:  # a file-system hiccup must not stop the beating for good
                print(f"heartbeat {self.path} not touched ({exc}); beating on", file=sys.stderr, flush=True)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner_dead(trial: FrozenTrial) -> bool:
    """The trial's worker ran on this machine and its process is gone (a fact, whatever the storage)."""
    host, _, pid = trial.user_attrs.get("worker", "").rpartition(":")
    return host == socket.gethostname() and pid.isdigit() and not _process_alive(int(pid))


def storage_clock(directory: Path) -> float:
    """Now, by the clock that stamps files in `directory` (on NFS, the server's): a heartbeat file's
    mtime is compared with this, never with this machine's clock."""
    probe = directory / f".clock-{socket.gethostname()}-{os.getpid()}"
    probe.touch()
    return probe.stat().st_mtime


def _age(trial: FrozenTrial) -> float:
    """Seconds since the trial started RUNNING (Optuna stamps it with the local time of its creator)."""
    return (datetime.now() - trial.datetime_start).total_seconds() if trial.datetime_start else 0.0


def _rdb_beating(storage: BaseStorage, trial_ids: list[int]) -> set[int]:
    """The trials that have recorded at least one heartbeat (RDB storage, behind the study's cache)."""
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session
    rdb = getattr(storage, "_backend", storage)
    with _create_scoped_session(rdb.scoped_session) as session:
        rows = session.query(models.TrialHeartbeatModel.trial_id).filter(
            models.TrialHeartbeatModel.trial_id.in_(trial_ids)).all()
    return {row[0] for row in rows}


def lost_trials(study: optuna.Study, runs_dir: Path) -> list[tuple[FrozenTrial, str]]:
    """RUNNING trials that nobody runs any more, each with why: its worker's process is gone from this
    machine; its heartbeat stopped STALE_SECONDS ago (RDB storage: Optuna's heartbeat, judged by the
    database's clock; journal: the heartbeat file, judged by the file system's); or it has no heartbeat
    at all and started that long ago (an insert or a pop whose answer an outage lost and whose retry
    moved on; a worker that died before it recorded itself or its first beat)."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not running:
        return []
    if is_heartbeat_enabled(study._storage):
        stale = set(study._storage._get_stale_trial_ids(study._study_id))
        beating = _rdb_beating(study._storage, [t._trial_id for t in running])
        beat_age = {t._trial_id: STALE_SECONDS + 1 if t._trial_id in stale else 0.0 for t in running if t._trial_id in beating}
    else:
        beats = Path(runs_dir) / "optuna" / "heartbeats"
        beats.mkdir(parents=True, exist_ok=True)
        now = storage_clock(beats)
        files = {t._trial_id: heartbeat_path(runs_dir, study, t.number) for t in running}
        beat_age = {i: now - f.stat().st_mtime for i, f in files.items() if f.exists()}
    lost = []
    for trial in running:
        if _owner_dead(trial):
            lost.append((trial, f"its worker process ({trial.user_attrs['worker']}) is gone"))
        elif trial._trial_id in beat_age:
            if beat_age[trial._trial_id] > STALE_SECONDS:
                lost.append((trial, f"no heartbeat for more than {STALE_SECONDS:g} s"))
        elif _age(trial) > STALE_SECONDS:
            lost.append((trial, f"no heartbeat {STALE_SECONDS:g} s after it started "
                                + ("(its worker died before its first beat)" if "worker" in trial.user_attrs else
                                   "(nobody took it up: the answer to its creation or its pop was lost)")))
    return lost


def point_of(trial: optuna.trial.FrozenTrial) -> str | None:
    """The grid point of a trial, including an enqueued (WAITING) one."""
    if "point" in trial.user_attrs:
        return trial.user_attrs["point"]
    fixed = getattr(trial, "system_attrs", {}).get("fixed_params", {})  # a live Trial has none
    return next((v for k, v in {**trial.params, **fixed}.items() if k.startswith("point_")), None)
