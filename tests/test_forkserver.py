"""Children of the forkserver: the environment each is given, its log, its name and its exit status."""
from __future__ import annotations

import os
import signal
import sys
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


@pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="the server is reused on CPython 3.11 only")
def test_a_child_that_starts_children_has_them_forked_by_the_same_server(tmp_path):
    """A sweep driver forked from the server (as the tests start theirs) must not start a second server that
    imports torch and MLflow again: its workers come from the server that forked it."""
    child = _start("grandchild", tmp_path)
    assert child.wait(120) == 0, (tmp_path / "grandchild.log").read_text()[-2000:]
    server, code = (tmp_path / "grandchild").read_text().split()
    assert code == "0"
    assert (tmp_path / "grandchild.child").read_text() == server  # forked by the same server


def test_a_child_runs_in_the_folder_it_is_given_with_stderr_apart(tmp_path):
    (tmp_path / "here").mkdir()
    child = forkserver.ForkedProcess("tests.forked_probe", ["cwd", "relative.txt"], tmp_path / "out.log",
                                     dict(os.environ), "probe-child", cwd=tmp_path / "here", err_log=tmp_path / "err.log")
    assert child.wait(120) == 0
    assert (tmp_path / "here/relative.txt").read_text() == str(tmp_path / "here")
    assert (tmp_path / "out.log").read_text() == "to stdout\n" and (tmp_path / "err.log").read_text() == "cwd done\n"
