"""Children of the forkserver: the environment each is given, its log, its name and its exit status."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from study.runtime import forkserver

pytestmark = pytest.mark.skipif(not forkserver.available(), reason="no forkserver on this platform")


def _start(what: str, tmp_path: Path, **env: str) -> forkserver.ForkedProcess:
    return forkserver.ForkedProcess("tests.forked_probe", [what, str(tmp_path / what)], tmp_path / f"{what}.log",
                                    {**os.environ, **env}, "probe-child")


def test_each_child_reads_the_environment_it_is_given_not_the_servers(tmp_path):
    """The server outlives a test's environment: a child forked later must import the project's modules
    anew under its own (a preloaded study.sweep.timing would keep the server's heartbeat)."""
    (tmp_path / "a").mkdir()
    first = _start("heartbeat", tmp_path / "a", SWEEP_HEARTBEAT_SECONDS="7")
    assert first.wait(120) == 0
    (tmp_path / "b").mkdir()
    second = _start("heartbeat", tmp_path / "b", SWEEP_HEARTBEAT_SECONDS="11")
    assert second.wait(120) == 0
    assert (tmp_path / "a/heartbeat").read_text() == "7.0" and (tmp_path / "b/heartbeat").read_text() == "11.0"
    assert "heartbeat done" in (tmp_path / "b/heartbeat.log").read_text()  # stderr goes to the log


def test_a_child_has_its_name_its_exit_code_and_dies_of_its_signals(tmp_path):
    named = _start("name", tmp_path)
    assert named.wait(120) == 3 and (tmp_path / "name").read_text() == "probe-child"
    interrupted = _start("interrupt", tmp_path)
    assert interrupted.wait(120) == -signal.SIGINT  # as `python -m` ends on Ctrl-C
    log = (tmp_path / "interrupt.log").read_text()
    assert "interrupted on purpose" in log and "KeyboardInterrupt" in log
    sleeper = _start("sleep", tmp_path)
    deadline = time.monotonic() + 120
    while not (tmp_path / "sleep").exists():
        assert time.monotonic() < deadline and sleeper.poll() is None
        time.sleep(0.05)
    assert sleeper.poll() is None
    sleeper.kill()
    assert sleeper.wait(30) == -signal.SIGKILL and sleeper.returncode == -signal.SIGKILL
