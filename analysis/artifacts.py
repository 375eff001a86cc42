"""What the adaptive-dropout figures need beyond final metrics: each trial's retention.json artifact
and its adl/kept_fraction/<location> history, fetched from the tracking store."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from study.names import LOCATIONS, UTTERANCE_ERRORS

RETENTION = "retention.json"


@contextlib.contextmanager
def _quiet_downloads() -> Iterator[None]:
    """MLflow draws a progress bar per download: dozens of them for one tiny JSON file each."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    previous = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = previous


def _json_artifacts(client: MlflowClient, run_ids: Iterable[str], name: str) -> Iterator[tuple[str, dict]]:
    """(run id, parsed JSON) of the runs that have the artifact `name`, in order."""
    with tempfile.TemporaryDirectory() as tmp, _quiet_downloads():
        for run_id in run_ids:
            if name not in {a.path for a in client.list_artifacts(run_id)}:
                continue
            folder = Path(tmp) / run_id
            folder.mkdir()
            yield run_id, json.loads(Path(client.download_artifacts(run_id, name, str(folder))).read_text())


def load_retention(client: MlflowClient, run_ids: Iterable[str]) -> dict[str, dict[str, np.ndarray]]:
    """run id -> location -> final retention probabilities; runs without the artifact are absent."""
    found = {}
    for run_id, data in _json_artifacts(client, run_ids, RETENTION):
        probs = {loc: np.asarray(data[loc], dtype=float) for loc in LOCATIONS if len(data.get(loc) or [])}
        if probs:
            found[run_id] = probs
    return found


def load_utterance_errors(client: MlflowClient, run_ids: Iterable[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """run id -> (word edits, reference words) per test utterance, in the ids' order of the first run
    read; runs without the artifact (older ones) or with another test set are absent."""
    found, order = {}, None
    for run_id, data in _json_artifacts(client, run_ids, UTTERANCE_ERRORS):
        order = order or data["ids"]
        if data["ids"] == order:
            found[run_id] = (np.asarray(data["errors"], dtype=float), np.asarray(data["words"], dtype=float))
    return found


def load_kept_history(client: MlflowClient, trials: pd.DataFrame) -> pd.DataFrame:
    """run_id, location, epoch, kept_fraction: one row per logged epoch. A resumed trial may have
    logged an epoch twice; the later value is the one its model went on from."""
    rows = []
    for run_id, locations in zip(trials["run_id"], trials["locations"]):
        for loc in str(locations).split("+"):
            if loc not in LOCATIONS:
                continue
            latest = {}
            for m in client.get_metric_history(run_id, f"adl/kept_fraction/{loc}"):
                if m.step not in latest or m.timestamp >= latest[m.step].timestamp:
                    latest[m.step] = m
            rows += [(run_id, loc, step, m.value) for step, m in sorted(latest.items())]
    return pd.DataFrame(rows, columns=["run_id", "location", "epoch", "kept_fraction"])
