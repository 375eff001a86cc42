"""`python sweep.py EXPERIMENT --status`: a table of the sweep's trials, read from Optuna."""
from __future__ import annotations

import json

import optuna
import pandas as pd

from study.sweep.experiment_file import Experiment
from study.sweep.optuna_storage import open_storage, study_names
from study.sweep.optuna_storage import point_of


def status_table(experiment: Experiment, storage_url: str | None, runs_dir) -> pd.DataFrame:
    """One row per trial: state, method, run name, the knobs that vary, WER and size."""
    storage = open_storage(storage_url, experiment.name, runs_dir)
    rows = []
    for name in study_names(experiment.name):
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            continue
        for t in study.get_trials(deepcopy=False):
            point = json.loads(point_of(t) or "{}")
            knobs = {k: v for k, v in point.items() if k not in ("arm", "method")} if point else dict(t.params)
            a = t.user_attrs
            rows.append({"study": name, "trial": t.number, "state": t.state.name,
                         "method": a.get("method", point.get("method", "")), "run": a.get("run_name", ""),
                         "knobs": ", ".join(f"{k}={v}" for k, v in sorted(knobs.items())),
                         "dev WER": _pct(a.get("dev/wer")), "test WER": _pct(a.get("test/wer")),
                         "params": f"{int(a['params/total']):,}" if "params/total" in a else "",
                         "pruned": _pct(a.get("params/reduction")),
                         "note": a.get("failure_reason", a.get("skipped", ""))[:60]})
    return pd.DataFrame(rows)


def _pct(value: float | None) -> str:
    return f"{value:.2%}" if value is not None else ""


def pareto_front(experiment: Experiment, storage_url: str | None, runs_dir) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=study_names(experiment.name)[0],
                              storage=open_storage(storage_url, experiment.name, runs_dir))
    return study.best_trials
