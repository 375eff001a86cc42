"""Where a sweep's Optuna studies live, and how lost trials are found.

One machine: a journal file under runs/optuna/ (SQLite is not safe with parallel writers).
Several machines: PostgreSQL (or any SQLAlchemy URL) through RDBStorage, whose heartbeat (stamped by
the database's clock) says when a trial's worker vanished. The journal has no heartbeat, so each
worker touches a heartbeat file, whose age is read by the file system's clock. Either way each
worker records its host and pid on the trial: a RUNNING trial whose process is gone on this machine
is lost at once, one whose heartbeat is older than STALE_SECONDS wherever it ran.
"""
from __future__ import annotations

import os
import socket
import sys
import threading
import warnings
from pathlib import Path

import optuna
from optuna.storages import BaseStorage, JournalStorage
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock
from optuna.trial import FrozenTrial, TrialState

from study.sweep.storage_retry import ResilientRDBStorage

# Optuna flags heartbeats as experimental; they are what makes multi-machine sweeps recoverable.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

HEARTBEAT_SECONDS = 20
STALE_SECONDS = 120
DIRECTIONS = ["minimize", "minimize"]  # dev/wer, params/total


def journal_path(runs_dir: Path, experiment: str) -> Path:
    """The default storage: a journal file per experiment."""
    return Path(runs_dir) / "optuna" / f"{experiment}.journal"


def open_storage(url: str | None, experiment: str, runs_dir: Path) -> BaseStorage:
    if not url:
        path = journal_path(runs_dir, experiment)
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = JournalFileSymlinkLock(str(path))
        repair_torn_journal(path, lock)
        return JournalStorage(JournalFileBackend(str(path), lock))
    return ResilientRDBStorage(url, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=STALE_SECONDS)


def repair_torn_journal(path: Path, lock: JournalFileSymlinkLock) -> bool:
    """A write cut short (a full disk, a kill mid-write) leaves a last line without its end; the next
    append would run into it and every later read of the journal would fail. Under the journal's own
    lock, the torn tail is moved to `<journal>.torn` and cut off, with a message; True if it was."""
    if not _torn(path):
        return False
    lock.acquire()
    try:
        if not _torn(path):  # another process repaired it first
            return False
        data = path.read_bytes()
        good = data.rfind(b"\n") + 1  # the end of the last whole record
        with open(path.with_name(path.name + ".torn"), "ab") as torn:
            torn.write(data[good:])
        os.truncate(path, good)
    finally:
        lock.release()
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


def is_stale(trial: FrozenTrial, study: optuna.Study, runs_dir: Path, now: float) -> bool:
    """A RUNNING journal trial whose worker process is gone or has stopped beating (`now`: storage_clock)."""
    if _owner_dead(trial):
        return True
    beat = heartbeat_path(runs_dir, study, trial.number)
    if not beat.exists():  # not beating yet: its worker records the trial before the first beat
        return False
    return now - beat.stat().st_mtime > STALE_SECONDS


def lost_trials(study: optuna.Study, runs_dir: Path) -> list[FrozenTrial]:
    """RUNNING trials whose worker is gone: its process dead on this machine, or its heartbeat stale
    (RDB storage: Optuna's heartbeat, judged by the database's clock; journal: the heartbeat file)."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not running:
        return []
    if is_heartbeat_enabled(study._storage):
        stale_ids = set(study._storage._get_stale_trial_ids(study._study_id))
        return [t for t in running if t._trial_id in stale_ids or _owner_dead(t)]
    beats = Path(runs_dir) / "optuna" / "heartbeats"
    beats.mkdir(parents=True, exist_ok=True)
    now = storage_clock(beats)
    return [t for t in running if is_stale(t, study, runs_dir, now)]


def fail_stale_trials(study: optuna.Study, runs_dir: Path) -> list[FrozenTrial]:
    """Marks lost trials FAIL (they are run again) and returns them."""
    lost = lost_trials(study, runs_dir)
    for trial in lost:
        study._storage.set_trial_user_attr(trial._trial_id, "failure_reason", "worker lost (stale trial)")
        try:
            study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another process got there first, or the trial ended meanwhile
    return lost


def point_of(trial: optuna.trial.FrozenTrial) -> str | None:
    """The grid point of a trial, including an enqueued (WAITING) one."""
    if "point" in trial.user_attrs:
        return trial.user_attrs["point"]
    fixed = getattr(trial, "system_attrs", {}).get("fixed_params", {})  # a live Trial has none
    return next((v for k, v in {**trial.params, **fixed}.items() if k.startswith("point_")), None)
