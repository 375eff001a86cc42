"""What one experiment's figures and tables are made from, read from the MLflow store or from a results
bundle: one gzipped JSON file under results/ that holds the experiment's runs (settings, tags,
metrics), the artifacts the analysis reads (per-utterance errors for the bootstrap, final retention
probabilities, kept fractions per epoch) and where the runs were made. A bundle regenerates every
table and figure with no store and no training, byte for byte as the store does.

Format (version 1): {"format": FORMAT, "version": 1, "experiment": name, "parent_run_id": id or null,
"code": {"code_version": [...], "code_hash": [...]}, "runs": {"columns": [{"name", "dtype", "data"}, ...]}
(search_runs' table, column by column, floats exact),
"utterance_errors": {run_id: {"errors": [...], "words": [...]}}, "retention": {run_id: {location:
[...]}}, "kept_history": [[run_id, location, epoch, kept_fraction], ...]}.
"""
from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from analysis.artifacts import load_kept_history, load_retention, load_utterance_errors
from analysis.runs import Trials, search_experiment_runs, trials_from_runs
from study.durable import replace_durably
from study.names import ADAPTIVE_DROPOUT

FORMAT = "adaptive-dropout-study results bundle"
VERSION = 1


class BundleError(Exception):
    """A bundle that cannot be read, or one that would be overwritten by runs of other code."""


@dataclass
class Inputs:
    experiment: str
    runs: pd.DataFrame  # search_runs' rows of the experiment, with an `experiment` column
    trials: Trials
    errors: dict[str, tuple[np.ndarray, np.ndarray]]  # run id -> (word edits, reference words) per test utterance
    retention: dict[str, dict[str, np.ndarray]]  # run id -> location -> final retention probabilities
    history: pd.DataFrame  # run_id, location, epoch, kept_fraction
    parent_run_id: str | None = None  # the sweep whose trials were read, when one was asked for

    def code(self) -> dict[str, list[str]]:
        """The code versions (commit) and package hashes of the finished trials' runs."""
        runs = self.runs[self.runs["run_id"].isin(self.trials.frame["run_id"])]
        found = {}
        for key, column in (("code_version", "params.code_version"), ("code_hash", "tags.env.code_hash")):
            values = runs[column].dropna().astype(str) if column in runs.columns else pd.Series([], dtype=str)
            found[key] = sorted(set(values))
        return found


def from_store(experiment: str, tracking_uri: str, parent_run_id: str | None = None) -> Inputs:
    runs = search_experiment_runs(tracking_uri, [experiment], parent_run_id)
    trials = trials_from_runs(runs, parent_run_id)
    client = MlflowClient(tracking_uri)
    frame = trials.frame
    adl = frame[frame["method"] == ADAPTIVE_DROPOUT]
    return Inputs(experiment, runs, trials, errors=load_utterance_errors(client, frame["run_id"]),
                  retention=load_retention(client, adl["run_id"]), history=load_kept_history(client, adl),
                  parent_run_id=parent_run_id)


def write_bundle(inputs: Inputs, path: Path, force: bool = False) -> Path:
    """Writes `inputs` to `path` (gzipped JSON, the same bytes for the same runs). A bundle already
    there whose runs came from other code is kept unless `force`: it may be what a page cites."""
    code = inputs.code()
    if path.exists() and not force:
        old = read_header(path)
        if old.get("code") != code:
            raise BundleError(f"{path} holds runs of other code ({_describe(old.get('code', {}))}; these: "
                              f"{_describe(code)}); --force replaces it")
    document = {
        "format": FORMAT, "version": VERSION, "experiment": inputs.experiment, "parent_run_id": inputs.parent_run_id,
        "code": code,
        "runs": _table(inputs.runs),
        "utterance_errors": {run_id: {"errors": errors.tolist(), "words": words.tolist()}
                             for run_id, (errors, words) in inputs.errors.items()},
        "retention": {run_id: {loc: probs.tolist() for loc, probs in locations.items()}
                      for run_id, locations in inputs.retention.items()},
        "kept_history": inputs.history.values.tolist(),
    }
    data = json.dumps(document, separators=(",", ":")).encode()  # keys in the order the analysis reads them

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as out:
            out.write(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_durably(path, write)
    return path


def _table(frame: pd.DataFrame) -> dict:
    """A data frame as JSON that reads back to the same values and dtypes (floats exact: pandas' own
    JSON keeps 10 digits, enough to move a point of a figure)."""
    columns = []
    for name in frame.columns:
        values, dtype = frame[name], str(frame[name].dtype)
        if dtype.startswith("datetime64"):
            data = [None if pd.isna(v) else int(v.value) for v in values]
        elif dtype.startswith(("float", "int", "bool")):
            data = [None if pd.isna(v) else v.item() if hasattr(v, "item") else v for v in values.tolist()]
        else:
            data = [None if v is None or (isinstance(v, float) and np.isnan(v)) else v for v in values]
        columns.append({"name": name, "dtype": dtype, "data": data})
    return {"columns": columns}


def _frame(table: dict) -> pd.DataFrame:
    columns = {}
    for column in table["columns"]:
        dtype, data = column["dtype"], column["data"]
        if dtype.startswith("datetime64"):
            series = pd.Series(pd.to_datetime(data, unit="ns", utc="UTC" in dtype))
        elif dtype.startswith("float"):
            series = pd.Series([np.nan if v is None else v for v in data], dtype=dtype)
        elif dtype.startswith(("int", "bool")):
            series = pd.Series(data, dtype=dtype)
        else:
            series = pd.Series(data, dtype=object)
        columns[column["name"]] = series if dtype == "object" else series.astype(dtype)  # e.g. pandas' "str"
    return pd.DataFrame(columns)


def _describe(code: dict) -> str:
    return ", ".join(f"{key} {' '.join(values) or 'unknown'}" for key, values in sorted(code.items())) or "unknown"


def _read(path: Path) -> dict:
    try:
        with gzip.open(path, "rt", encoding="utf-8") as source:
            document = json.load(source)
    except (OSError, EOFError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: not a results bundle ({exc})") from exc
    if document.get("format") != FORMAT:
        raise BundleError(f"{path}: not a results bundle (format {document.get('format')!r})")
    if document.get("version") != VERSION:
        raise BundleError(f"{path}: bundle version {document.get('version')}; this code reads version {VERSION}")
    return document


def read_header(path: Path) -> dict:
    document = _read(path)
    return {key: document[key] for key in ("experiment", "parent_run_id", "code")}


def read_bundle(path: Path) -> Inputs:
    document = _read(path)
    runs = _frame(document["runs"])
    parent = document["parent_run_id"]
    errors = {run_id: (np.asarray(e["errors"], dtype=float), np.asarray(e["words"], dtype=float))
              for run_id, e in document["utterance_errors"].items()}
    retention = {run_id: {loc: np.asarray(probs, dtype=float) for loc, probs in locations.items()}
                 for run_id, locations in document["retention"].items()}
    history = pd.DataFrame(document["kept_history"], columns=["run_id", "location", "epoch", "kept_fraction"])
    history["epoch"] = history["epoch"].astype(int)
    history["kept_fraction"] = history["kept_fraction"].astype(float)
    return Inputs(document["experiment"], runs, trials_from_runs(runs, parent), errors, retention, history, parent)
