"""Imported by every Python process a fault test starts (its folder is put on PYTHONPATH): the storage
calls named in SWEEP_TEST_LOST_ANSWERS commit, then their answer is lost once per process, as when a
connection drops on the way back. `create`: a worker's first new trial; `pop`: its first queued trial
taken (WAITING -> RUNNING). The sweep's own retries see only the dropped connection."""
import os

LOST = set(filter(None, os.environ.get("SWEEP_TEST_LOST_ANSWERS", "").split(",")))


def _lose_first_answer(name: str, applies) -> None:
    from optuna.storages import RDBStorage
    from sqlalchemy.exc import OperationalError
    committed = getattr(RDBStorage, name)
    lost = []

    def call(self, *args, **kwargs):
        result = committed(self, *args, **kwargs)
        if not lost and applies(*args, **kwargs):
            lost.append(name)
            raise OperationalError(name, {}, ConnectionResetError("connection dropped after the commit (fault test)"))
        return result
    setattr(RDBStorage, name, call)


if LOST:
    from optuna.trial import TrialState
    if "create" in LOST:  # an `ask` creates a RUNNING trial from no template; enqueuing passes one
        _lose_first_answer("_create_new_trial", lambda study_id, template_trial=None: template_trial is None)
    if "pop" in LOST:
        _lose_first_answer("set_trial_state_values", lambda trial_id, state, values=None: state == TrialState.RUNNING)
