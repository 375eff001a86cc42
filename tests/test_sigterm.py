"""A trial stopped with SIGTERM closes its MLflow run as KILLED instead of leaving it RUNNING."""
from __future__ import annotations

import os
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
    args = [sys.executable, str(REPO / "sweep.py"), str(REPO / "experiments" / "default.toml"), "--tracking-uri", uri]
    for section, values in TINY_RECIPE.items():
        for key, value in values.items():
            if isinstance(value, dict):
                args += [arg for k, v in value.items() for arg in ("--set", f"{section}.{key}.{k}={v}")]
            elif section != "tracking":
                args += ["--set", f"{section}.{key}={value}"]
    args += ["--set", f"data.cache_dir={corpus_cache}", "--set", "tracking.experiment=sigterm",
             "--set", "train.epochs=200"]  # far longer than the test waits
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until the run exists and an epoch has gone by
        line = proc.stdout.readline()
        if line.startswith("epoch 1:") or not line:
            break
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("sigterm").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "KILLED"
