"""Shared fixtures: a tiny built-in corpus (generated once per session), a tiny recipe, and the services
(PostgreSQL, an MLflow tracking server, SLURM); tests that need PostgreSQL or SLURM are marked so and
run one at a time, on one xdist worker (they share the database and the cluster)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from filelock import FileLock

# A worker with nothing to take looks again every half second instead of every 3 (subprocesses inherit it)
os.environ.setdefault("SWEEP_PHASE_POLL_SECONDS", "0.5")
# One OpenMP thread per process (read by torch at import, here and in every subprocess): the suite runs a
# process per core and one more, and pools of threads spinning for cores they did not get made in-process
# training up to ten times slower (trials set their own count from train.threads)
os.environ.setdefault("OMP_NUM_THREADS", "1")

from study.config import Config, build  # noqa: E402 (after the environment it reads)
from tests.helpers import TINY_RECIPE, train_ddp_reference  # noqa: E402
from tests.services import free_port, postgres_url, slurm_up  # noqa: E402


def _shared_folder(tmp_path_factory, worker_id: str) -> Path:
    """The folder above every xdist worker's own: what one worker makes there, the others find."""
    base = tmp_path_factory.getbasetemp()
    return base if worker_id == "master" else base.parent


def _made_once(path: Path, make) -> Path:
    """`make()` run by the first xdist worker that finds `path` absent; the others wait on its lock."""
    with FileLock(f"{path}.lock"):
        if not path.exists():
            make()
    return path


@pytest.fixture(scope="session")
def corpus_cache(tmp_path_factory, worker_id) -> Path:
    """One cache folder for the whole run, so the tiny corpus and its features are made once, by whichever
    xdist worker asks first (the others wait on its lock); variants that tests ask for are added beside them."""
    from study.data.prepared import prepare_data
    cache = _shared_folder(tmp_path_factory, worker_id) / "cache"
    recipe = {**TINY_RECIPE, "data": {**TINY_RECIPE["data"], "cache_dir": str(cache)}}
    return _made_once(cache, lambda: prepare_data(build(Config, recipe)))


@pytest.fixture(scope="session")
def empty_mlflow_store(tmp_path_factory) -> Path:
    """An MLflow SQLite store migrated once per session (migrating one from nothing takes about a second)."""
    import mlflow
    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture(autouse=True)
def migrated_mlflow_store(request, empty_mlflow_store: Path) -> None:
    """A test's `tmp_path/mlflow.db`, the store most tests and their sweeps use, starts migrated and empty."""
    if "tmp_path" in request.fixturenames:
        shutil.copyfile(empty_mlflow_store, request.getfixturevalue("tmp_path") / "mlflow.db")


@pytest.fixture(scope="session")
def ddp_reference(tmp_path_factory, worker_id, corpus_cache) -> dict:
    """One two-rank DDP trial (tests.helpers.train_ddp_reference), trained once per session whichever xdist
    worker asks first (the others wait on its lock): the DDP tests compare it with one process, the SLURM
    test with ranks SLURM started."""
    shared = _shared_folder(tmp_path_factory, worker_id)
    result = shared / "ddp_reference.json"

    def train() -> None:
        result.write_text(json.dumps(train_ddp_reference(shared / "ddp_reference", corpus_cache)))
    _made_once(result, train)
    return json.loads(result.read_text())


@pytest.fixture
def tiny_config(corpus_cache: Path) -> Config:
    recipe = {**TINY_RECIPE, "data": {**TINY_RECIPE["data"], "cache_dir": str(corpus_cache)}}
    return build(Config, recipe)


@pytest.fixture
def tracking_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto`: one xdist worker more than the cores for the whole suite, one per core for the fast loop
    (`-m "not slow"`). Part of many slow tests is waiting (on a timer, a service, a SLURM job or a child's
    imports), which a third worker fills on 2 cores: 397 s of pytest against 451 s with two; the fast loop
    waits for little, and a third worker only contends: 108 s against 95 s with two (each pair measured one
    after the other on 2026-12-08)."""
    cores = len(os.sched_getaffinity(0))
    return cores if "not slow" in (config.getoption("markexpr") or "") else cores + 1


def _slow_module(item) -> bool:
    marks = getattr(item.module, "pytestmark", [])
    return any(mark.name == "slow" for mark in (marks if isinstance(marks, list) else [marks]))


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items) -> None:
    # Files whose every test is slow first, whole (their module fixtures set up once): a long test that
    # mostly waits then overlaps the short ones instead of running alone at the end
    items.sort(key=lambda item: not _slow_module(item))
    for item in items:
        for service, fixture in (("postgres", "postgres_storage"), ("slurm", "slurm_cluster")):
            if fixture in item.fixturenames:
                item.add_marker(getattr(pytest.mark, service))
            if item.get_closest_marker(service):
                item.add_marker(pytest.mark.xdist_group(service))
        if item.get_closest_marker("slurm"):
            item.add_marker(pytest.mark.slow)  # jobs start in seconds at best


@pytest.fixture
def postgres_storage(tmp_path) -> str:
    url = postgres_url()
    for name in optuna.get_all_study_names(url):
        if name.startswith("tiny_sweep"):
            optuna.delete_study(study_name=name, storage=url)
    return url


@pytest.fixture
def mlflow_server(tmp_path, empty_mlflow_store):
    """`mlflow server` on a store that starts migrated, without MLflow's background job workers (a sweep
    has no use for them; they took most of the server's start-up)."""
    port = free_port()
    shutil.copyfile(empty_mlflow_store, tmp_path / "server.db")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                               "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                               "--default-artifact-root", str(tmp_path / "artifacts"), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            assert time.time() < deadline and server.poll() is None, "mlflow server did not start"
            time.sleep(0.5)
    yield uri
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=30)


@pytest.fixture
def slurm_cluster() -> None:
    slurm_up()
