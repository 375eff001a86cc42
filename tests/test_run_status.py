"""run_status tells a run missing from the store from a store that cannot be asked: only the first is
None (the caller may train or start afresh); the second is raised, never read as "no such run"."""
from __future__ import annotations

import socket
import uuid

import mlflow
import pytest
from mlflow.exceptions import MlflowException

from study.tracking.mlflow_runs import run_status


def test_a_run_of_the_store_has_its_status_and_a_run_not_in_it_none(tracking_uri):
    client = mlflow.MlflowClient(tracking_uri)
    run_id = client.create_run("0").info.run_id
    assert run_status(run_id, tracking_uri) == "RUNNING"
    client.set_terminated(run_id, "FINISHED")
    assert run_status(run_id, tracking_uri) == "FINISHED"
    assert run_status(uuid.uuid4().hex, tracking_uri) is None
    assert run_status("not a run id!", tracking_uri) is None  # a damaged record names no run of the store


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_unreachable_store_is_an_error_not_a_missing_run(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with pytest.raises(MlflowException, match="failed"):
        run_status(uuid.uuid4().hex, f"http://127.0.0.1:{_closed_port()}")
