"""A sweep as sweep.py records it reads right in the MLflow UI, at the address sweep.py prints: the trial
runs nested under the sweep's parent run, each with its test/wer and params/total. Drives the real UI (`mlflow server`) in headless
Chromium through Playwright; needs Debian's chromium package (/usr/bin/chromium)."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from study.tracking.store import runs_url
from tests.analysis_store import PARENT_NAME, Store, build_store
from tests.services import missing_service

CHROMIUM = Path("/usr/bin/chromium")
SERVER_START_S = 180  # the server imports most of MLflow before it answers: slow on a busy 2-core machine

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(autouse=True)
def chromium() -> None:
    if not CHROMIUM.exists():
        missing_service("needs Chromium at /usr/bin/chromium (apt-get install -y chromium; .ci/run installs it)")

sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package (pip install -e '.[test]')")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    return build_store(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def server(store: Store, tmp_path_factory) -> Iterator[str]:
    """`mlflow server` on the store, in its own process group so that it and its workers stop together."""
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    command = [str(mlflow_cli) if mlflow_cli.exists() else shutil.which("mlflow") or "mlflow", "server",
               "--backend-store-uri", store.tracking_uri, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no background job workers to start
    with log.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + SERVER_START_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited with code {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail(f"mlflow server did not answer within {SERVER_START_S} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _row(page, run_id: str):
    """A run's row; the grid draws each row twice (pinned name column, scrolling columns), same row-id."""
    return page.locator(f'[role="row"][row-id="{run_id}"]')


def _show_column(page, metric: str) -> None:
    """Ticks a metric in the run table's column chooser (metrics are hidden until chosen)."""
    page.get_by_role("button", name="Columns", exact=True).click()
    page.get_by_placeholder("Search columns").fill(metric)
    page.get_by_role("dialog").get_by_text(metric, exact=True).click()
    page.keyboard.press("Escape")


def test_sweep_runs_nested_with_their_metrics(store: Store, server: str, tmp_path: Path):
    client = MlflowClient(store.tracking_uri)
    children = client.search_runs([store.experiment_id], f"tags.`mlflow.parentRunId` = '{store.parent_run_id}'")
    assert len(children) > 5

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            page = browser.new_page(viewport={"width": 1800, "height": 1400})
            page.set_default_timeout(60_000)
            # The address sweep.py prints at the end: the runs table (not the GenAI overview that a plain
            # experiment link opens on), filtered to the sweep, its parent run ready to expand.
            page.goto(runs_url(server, store.experiment_id, store.parent_run_id))
            parent = _row(page, store.parent_run_id).first
            parent.wait_for()
            assert "workflowType=machine_learning" in page.url and "mlflow.parentRunId" in page.url
            assistant = page.locator('[data-assistant-ui] button[aria-label="Close"]')
            if assistant.count():  # a chat side panel: closed so that the screenshot shows the whole table
                assistant.first.click()
            assert PARENT_NAME in parent.inner_text()
            # Nested: the trials are hidden under the collapsed parent, and appear right below it.
            assert all(_row(page, c.info.run_id).count() == 0 for c in children)
            parent.locator("button").first.click()  # the expander in the parent's name cell
            for child in children:
                _row(page, child.info.run_id).first.wait_for()
            top = int(parent.get_attribute("row-index"))
            below = sorted(int(_row(page, c.info.run_id).first.get_attribute("row-index")) for c in children)
            assert below == list(range(top + 1, top + 1 + len(children)))

            for metric in ("test/wer", "params/total"):
                _show_column(page, metric)
            finished = [c for c in children if c.info.status == "FINISHED"]

            def cell(run, metric: str):
                return _row(page, run.info.run_id).locator(f'[col-id="metrics.`{metric}`"]')

            cell(finished[0], "test/wer").wait_for()
            for child in children:
                assert _row(page, child.info.run_id).filter(has_text=child.info.run_name).count() == 1
            for child in finished:
                wer, params = child.data.metrics["test/wer"], child.data.metrics["params/total"]
                assert float(cell(child, "test/wer").inner_text()) == pytest.approx(wer, abs=1e-3), child.info.run_name
                assert float(cell(child, "params/total").inner_text()) == params, child.info.run_name
            page.screenshot(path=str(tmp_path / "ui_screenshot.png"), full_page=True)  # kept with the test's files
        finally:
            browser.close()
