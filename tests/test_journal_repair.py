"""A journal record torn by a failed write (a full disk, a kill mid-write) while other processes have the
journal open: their next append must not glue onto it, and a journal where an older process did glue a
record onto a torn one must still be read."""
from __future__ import annotations

import json
import os

import optuna
import pytest

from study.sweep.optuna_storage import journal_path, open_storage

EXPERIMENT = "exp"


def _study(storage: optuna.storages.BaseStorage) -> optuna.Study:
    return optuna.load_study(study_name="s", storage=storage)


def _seen(storage: optuna.storages.BaseStorage) -> tuple[list[float | None], dict]:
    study = _study(storage)
    return [t.value for t in study.trials], study.user_attrs


def test_an_append_after_a_torn_record_never_glues_onto_it(tmp_path, capsys):
    """Two processes have the journal open; a third's write is cut short (it dies: nobody ever read the
    torn record). The next append, by a process that opened the journal before the tear, cuts the torn
    tail off first; every process, and a fresh one, then reads every whole record."""
    first = open_storage(None, EXPERIMENT, tmp_path)
    optuna.create_study(study_name="s", storage=first).add_trial(optuna.trial.create_trial(value=1.0))
    second = open_storage(None, EXPERIMENT, tmp_path)
    journal = journal_path(tmp_path, EXPERIMENT)

    _study(open_storage(None, EXPERIMENT, tmp_path)).set_user_attr("torn", "the dying process's record")
    os.truncate(journal, journal.stat().st_size - 5)  # its write was cut short
    torn = journal.read_bytes()[journal.read_bytes().rfind(b"\n") + 1:]

    _study(second).add_trial(optuna.trial.create_trial(value=2.0))
    _study(first).set_user_attr("after", 1)

    assert "cut short" in capsys.readouterr().out
    assert journal.with_name(journal.name + ".torn").read_bytes() == torn
    assert all(json.loads(line) for line in journal.read_bytes().splitlines())  # no glued line
    for storage in (first, second, open_storage(None, EXPERIMENT, tmp_path)):
        assert _seen(storage) == ([1.0, 2.0], {"after": 1})


def _glue_torn_record(lines: list[bytes], at: int) -> list[bytes]:
    """What an older process did: the record at `at` torn, the next one appended onto it."""
    return lines[:at] + [lines[at][:-12] + lines[at + 1]] + lines[at + 2:]


def _insert_zeros(lines: list[bytes], at: int) -> list[bytes]:
    """A crash that left a line of zero bytes, with no record on it at all."""
    return lines[:at] + [b"\0" * 16 + b"\n"] + lines[at:]


@pytest.mark.parametrize("mangle, attrs", [(_glue_torn_record, {"kept": 1}),
                                           (_insert_zeros, {"lost": 1, "kept": 1})])
def test_a_journal_with_a_broken_line_in_the_middle_is_read_with_every_whole_record(tmp_path, capsys, mangle, attrs):
    storage = open_storage(None, EXPERIMENT, tmp_path)
    study = optuna.create_study(study_name="s", storage=storage)
    study.add_trial(optuna.trial.create_trial(value=1.0))
    study.set_user_attr("lost", 1)
    study.add_trial(optuna.trial.create_trial(value=2.0))
    study.set_user_attr("kept", 1)
    journal = journal_path(tmp_path, EXPERIMENT)
    lines = journal.read_bytes().splitlines(keepends=True)
    broken = next(i for i, line in enumerate(lines) if b'"lost"' in line)
    journal.write_bytes(b"".join(mangle(lines, broken)))

    reader, other = open_storage(None, EXPERIMENT, tmp_path), open_storage(None, EXPERIMENT, tmp_path)
    assert _seen(reader) == ([1.0, 2.0], attrs)
    _study(other).add_trial(optuna.trial.create_trial(value=3.0))  # read on from where each left off
    assert _seen(reader) == _seen(other) == ([1.0, 2.0, 3.0], attrs)
    err = capsys.readouterr().err
    assert err.count(f"{journal}: the line at byte ") == 2  # once per process that read it
    assert ("kept the whole record after it" in err) == (mangle is _glue_torn_record)
