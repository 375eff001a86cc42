"""The hang watchdog's proof of life: the progress file's age is read by the watcher's own clock, and the
data preparation before training beats it (a large corpus's first pass must not look like a hang)."""
from __future__ import annotations

import os
import time
from dataclasses import asdict

from study.config import FeatureConfig
from study.data.feature_cache import build_feature_cache
from study.data.splits import load_splits
from study.runtime import progress


def test_idle_time_is_read_by_the_watchers_clock_not_compared_with_a_file_servers(tmp_path):
    beats = tmp_path / "worker.progress"
    beats.touch()
    hour_ago = time.time() - 3600
    os.utime(beats, (hour_ago, hour_ago))  # stamped by a file server whose clock is an hour behind
    watch = progress.Watch(beats)
    assert watch.idle_seconds() < 1
    time.sleep(0.3)
    assert 0.3 <= watch.idle_seconds() < 2  # not moved since: idle, by this machine's clock
    hour_ahead = time.time() + 3600
    os.utime(beats, (hour_ahead, hour_ahead))  # a beat, stamped by a clock an hour ahead
    assert watch.idle_seconds() < 0.1


def test_feature_extraction_beats_the_progress_file(tiny_config, tmp_path, monkeypatch):
    beats = tmp_path / "worker.progress"
    monkeypatch.setenv(progress.ENV, str(beats))
    monkeypatch.setattr(progress, "_last_beat", 0.0)
    sources, cfg = [(u.path, None) for u in load_splits(tiny_config.data)["train"]], FeatureConfig()
    beats.unlink(missing_ok=True)  # beaten by the corpus's generation, when this test made it
    monkeypatch.setattr(progress, "_last_beat", 0.0)
    build_feature_cache(sources, asdict(cfg), cfg.n_mels, tmp_path / "features", workers=1)
    assert beats.exists()
