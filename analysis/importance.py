"""Which searched hyperparameters matter, for a `mode = "search"` sweep: Optuna's PED-ANOVA importances
for the dev WER and for the parameter reduction, from the runs in MLflow (no Optuna storage needed).

A search trial's run carries its sampled values in the `grid_point` tag (JSON). The ranges are taken as
the span of the values tried (PED-ANOVA compares the best trials' density with the whole's within it).
"""
from __future__ import annotations

import json
import math
import warnings

import optuna
import pandas as pd
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution

from analysis.figures import Skipped
from analysis.tables import Column, Table, as_text, fixed_digits

MIN_TRIALS = 8  # fewer: the top 10% is one trial, and importances say nothing
TARGETS = {"dev_wer": ("dev WER", 1.0), "reduction": ("parameter reduction", -1.0)}  # sign: PED-ANOVA wants low


def searched_values(frame: pd.DataFrame) -> pd.DataFrame:
    """The search trials' sampled values, indexed by run id, one column per searched key (lists as JSON text)."""
    rows = {}
    for run_id, text in zip(frame["run_id"], frame["grid_point"]):
        values = json.loads(text) if isinstance(text, str) and text.startswith("{") else {}
        if values and "arm" not in values:  # a grid point names its arm; a search point does not
            rows[run_id] = {k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in values.items()}
    return pd.DataFrame.from_dict(rows, orient="index")


def _distribution(values: pd.Series) -> BaseDistribution:
    numeric = pd.to_numeric(values, errors="coerce")
    if numeric.notna().all() and not values.map(lambda v: isinstance(v, bool)).any():
        low, high = float(numeric.min()), float(numeric.max())
        return FloatDistribution(low, high, log=low > 0 and high / low >= 10)
    return CategoricalDistribution(sorted(values.astype(str).unique()))


def importances(frame: pd.DataFrame) -> pd.DataFrame:
    """Parameter x {dev WER, reduction}: PED-ANOVA importance (each column sums to 1)."""
    values = searched_values(frame)
    if len(values) < MIN_TRIALS:
        raise Skipped(f"{len(values)} finished search trials; importances need at least {MIN_TRIALS}")
    varied = [k for k in values.columns if values[k].nunique() > 1]
    if not varied:
        raise Skipped("no searched hyperparameter took two values")
    space = {k: _distribution(values[k]) for k in varied}
    results = frame.set_index("run_id").loc[values.index]
    table = {}
    for column, (name, sign) in TARGETS.items():
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # no line per in-memory study
        study = optuna.create_study()
        for run_id, row in values.iterrows():
            if math.isnan(float(results.loc[run_id, column])):
                continue
            params = {k: (float(row[k]) if isinstance(space[k], FloatDistribution) else str(row[k])) for k in varied}
            study.add_trial(optuna.trial.create_trial(params=params, distributions=space,
                                                      value=sign * float(results.loc[run_id, column])))
        with warnings.catch_warnings():  # it warns that it ranks for low targets: the sign above sees to that
            warnings.simplefilter("ignore", UserWarning)
            table[name] = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
    return pd.DataFrame(table).reindex(varied).rename_axis("parameter").reset_index()


def importance_table(frame: pd.DataFrame) -> Table:
    rows = importances(frame).sort_values("dev WER", ascending=False, kind="mergesort")
    columns = [Column("parameter", "Hyperparameter", "parameter", as_text),
               *(Column(f"importance_{key}", f"Importance for {name}", name, fixed_digits(3))
                 for key, (name, _) in TARGETS.items())]
    return Table(columns, rows.reset_index(drop=True))
