"""A sweep stopped with SIGTERM closes its trial and parent MLflow runs as KILLED, not RUNNING."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
from conftest import TINY_RECIPE

REPO = Path(__file__).resolve().parents[1]


def test_sigterm_marks_the_run_killed(tmp_path, corpus_cache):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [sys.executable, str(REPO / "sweep.py"), str(REPO / "experiments" / "dense.toml"), "--tracking-uri", uri]
    for section, values in TINY_RECIPE.items():
        for key, value in values.items():
            if isinstance(value, dict):
                args += [arg for k, v in value.items() for arg in ("--set", f"{section}.{key}.{k}={v}")]
            elif section != "tracking":
                args += ["--set", f"{section}.{key}={value}"]
    args += ["--set", f"data.cache_dir={corpus_cache}", "--set", "tracking.experiment=sigterm",
             "--set", "train.epochs=200"]  # far longer than the test waits
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list((tmp_path / "runs" / "trials").glob("*/*/checkpoint.pt")):  # an epoch has gone by
        assert time.time() < deadline and proc.poll() is None, "the trial never finished an epoch"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("sigterm").experiment_id])
    status = {r.data.tags["sweep.role"]: r.info.status for r in runs}
    assert len(runs) == 2 and status == {"trial": "KILLED", "parent": "KILLED"}
