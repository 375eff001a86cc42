"""Checkpoints and DONE records reach the disk before they take their names, and a checkpoint that
cannot be read (a torn write from before, a full disk) is set aside instead of failing every attempt."""
from __future__ import annotations

import os
from pathlib import Path

from study.durable import replace_durably
from study.tracking.trial_record import trial_dir
from study.trial import run_trial
from tests.helpers import finished_run


def test_the_data_and_the_rename_are_flushed_before_the_file_counts(tmp_path: Path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, Path.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))) or real_fsync(fd))
    monkeypatch.setattr(Path, "replace", lambda self, target: events.append(("rename", str(target))) or real_replace(self, target))
    target = tmp_path / "DONE"
    replace_durably(target, lambda tmp: tmp.write_text("whole"))
    assert events == [("fsync", str(tmp_path / "DONE.tmp")), ("rename", str(target)), ("fsync", str(tmp_path))]
    assert target.read_text() == "whole" and not (tmp_path / "DONE.tmp").exists()


def test_an_unreadable_checkpoint_is_set_aside_and_the_trial_starts_over(tiny_config, tracking_uri, tmp_path, capsys):
    tiny_config.train.epochs = 1
    folder = trial_dir(tiny_config, tmp_path)
    folder.mkdir(parents=True)
    (folder / "checkpoint.pt").write_bytes(b"PK\x03\x04 torn by a full disk")
    result = run_trial(tiny_config, tracking_uri, runs_dir=tmp_path)
    _, runs = finished_run(tracking_uri)
    assert [r.info.status for r in runs] == ["FINISHED"] and result.run_id == runs[0].info.run_id
    assert (folder / "checkpoint.pt.corrupt").read_bytes().endswith(b"torn by a full disk")
    assert "unreadable" in capsys.readouterr().out
