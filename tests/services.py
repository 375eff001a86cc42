"""The services some tests need (PostgreSQL, a SLURM cluster, Chromium, root for tmpfs): each test that
lacks one is skipped with the reason on a developer's machine, and fails under CI=1, where .ci/run
provides them all."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

POSTGRES_URL = os.environ.get("SWEEP_TEST_POSTGRES", "postgresql://postgres:postgres@127.0.0.1:5432/sweep_test")


def missing_service(reason: str) -> None:
    """Skips the test, or fails it under CI=1."""
    if os.environ.get("CI"):
        pytest.fail(f"CI=1 and a service is missing: {reason}")
    pytest.skip(reason)


def postgres_url() -> str:
    """The test database's URL, once it answers."""
    import sqlalchemy
    try:
        engine = sqlalchemy.create_engine(POSTGRES_URL)
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("select 1"))
    except Exception as exc:  # no server: a developer machine without PostgreSQL
        missing_service(f"no PostgreSQL server at {POSTGRES_URL} ({type(exc).__name__}); .ci/run starts one")
    return POSTGRES_URL


def restartable_postgres() -> tuple[str, str]:
    """The test database's URL and the local cluster's version (the tests that stop the server)."""
    url = postgres_url()
    versions = sorted(Path("/usr/lib/postgresql").glob("*")) if Path("/usr/lib/postgresql").is_dir() else []
    if os.geteuid() != 0 or not shutil.which("pg_ctlcluster") or not versions:
        missing_service("restarting PostgreSQL needs root and pg_ctlcluster (as in .ci/run)")
    return url, versions[-1].name


def slurm_up() -> None:
    state = ""
    if shutil.which("sinfo"):
        state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True).stdout
    if not any(s in state for s in ("idle", "mix", "alloc")):
        missing_service(f"no SLURM node up (sinfo: {state.strip() or 'absent'}); .ci/start_slurm starts a one-node one")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
