"""Reading trial runs from MLflow into one tidy table: a row per finished trial, with typed columns.

A trial is a run tagged sweep.role=trial, or a run with no sweep.role but a `method` tag (a single
trial launched outside a sweep, or the dense run that budget-matched baselines were derived from).
Failed and unfinished trials are listed in `Trials.excluded`, never mixed into `Trials.frame`.
Trials that differ only in their seed form one setting (`seed_groups`: mean and spread).
"""
from __future__ import annotations

import contextlib
import itertools
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from study.names import (
    LOCATIONS,
    PRUNES_DENSE,
    REPORT_ORDER,
    RETRAIN_PRUNED,
    STRUCTURED,
    TAG_BUDGET,
    TAG_FAILURE_REASON,
    TAG_GRID_POINT,
    TAG_LOCATIONS,
    TAG_METHOD,
    TAG_ROLE,
    TAG_SEED,
    TAG_SOURCE_DENSE_RUN,
    unread_sections,
)

# Every subset of the locations, largest first, in the canonical location order: the row order of tables.
LOCATION_SUBSETS = tuple("+".join(s) for n in range(len(LOCATIONS), 0, -1)
                         for s in itertools.combinations(LOCATIONS, n)) + ("none",)

# Final metrics (logged once, at the last epoch) and the column each becomes.
METRICS = {
    "dev/wer": "dev_wer", "dev/cer": "dev_cer", "test/wer": "test_wer", "test/cer": "test_cer",
    "params/total": "params", "params/encoder": "params_encoder", "params/dense_total": "dense_params",
    "params/reduction": "reduction", "flops/encoder_10s": "flops", "flops/dense_encoder_10s": "dense_flops",
    "latency/ms_b1_10s": "latency_ms", "latency/dense_ms_b1_10s": "dense_latency_ms", "time/train_s": "train_s",
    "train/epochs_total": "epochs_total", "adl/polarised/all": "polarised", "adl/dev_wer_uncut": "dev_wer_uncut",
    "onnx/test_wer": "onnx_wer", "onnx/latency_ms_b1_10s": "onnx_latency_ms",  # python -m study.quantize
    "int8/test_wer": "int8_wer", "int8/latency_ms_b1_10s": "int8_latency_ms",
    **{f"params/kept/{loc}": f"kept_params_{loc}" for loc in LOCATIONS},
    **{f"units/kept/{loc}": f"kept_units_{loc}" for loc in LOCATIONS},
}
# A FINISHED run without these never reached its final evaluation.
REQUIRED = ("test_wer", "params")
INTEGER_METRICS = ("params", "params_encoder", "dense_params")

# Parameters that say where or how a run ran, not what was trained: they never separate two settings.
BOOKKEEPING = ("code_version", "train.seed", "train.device", "train.threads", "train.compile", "data.cache_dir",
               "data.root")
# Parameters that have typed columns of their own, so the free-form `setting` label leaves them out.
DESCRIBED = ("method", "adl.locations", "adl.tau", "adl.alpha", "adl.threshold",
             "prune.target_params", "prune.target_reduction", "prune.source_run")

FAILED, UNFINISHED, INCOMPLETE = "failed", "unfinished", "finished without final metrics"
STATUS_KIND = {"FAILED": FAILED, "KILLED": FAILED, "RUNNING": UNFINISHED, "SCHEDULED": UNFINISHED}


class AnalysisError(Exception):
    """Base class: the tracking store does not hold what an analysis needs."""


class ExperimentNotFound(AnalysisError):
    """An experiment (or a sweep's parent run) named on the command line is not in the store."""


class NoFinishedRuns(AnalysisError):
    """An experiment exists but none of its trial runs finished with final metrics."""


def ignored_prefixes(method: str) -> tuple[str, ...]:
    """Configuration sections a method does not read: they must not split its runs into settings."""
    return tuple(f"{section}." for section in unread_sections(method))


@dataclass
class Trials:
    frame: pd.DataFrame  # one row per finished trial; columns in COLUMNS order
    excluded: pd.DataFrame  # experiment, run_id, run_name, status, kind, reason: trials left out
    parents: dict[str, str]  # experiment -> its latest sweep parent run (or the one asked for)

    def report(self, experiment: str) -> str:
        """A few lines for a person: what was read and what was left out, and why."""
        n = int((self.frame["experiment"] == experiment).sum())
        left = self.excluded[self.excluded["experiment"] == experiment]
        counts = left["kind"].value_counts()
        summary = ", ".join(f"{counts[k]} {k}" for k in (FAILED, UNFINISHED, INCOMPLETE) if k in counts)
        lines = [f"{experiment}: {n} finished trial run{'s' * (n != 1)}"
                 + (f"; left out {summary}" if summary else "")]
        for row in left.itertuples():
            reason = f": {row.reason}" if row.reason else ""
            lines.append(f"  left out {row.run_name} (run {row.run_id[:8]}, {row.status}{reason})")
        return "\n".join(lines)


@contextlib.contextmanager
def _tracking_uri(uri: str) -> Iterator[None]:
    """mlflow.search_runs reads the global tracking URI; set it for the call and put it back after."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


def _search(tracking_uri: str, experiment_ids: Sequence[str]) -> pd.DataFrame:
    with _tracking_uri(tracking_uri):
        runs = mlflow.search_runs(experiment_ids=list(experiment_ids), output_format="pandas")
    return runs.reset_index(drop=True)


def _column(runs: pd.DataFrame, name: str) -> pd.Series:
    """A column of search_runs' table; all missing when no run has that tag, param or metric."""
    if name in runs.columns:
        return runs[name].astype(object).where(runs[name].notna(), None)
    return pd.Series([None] * len(runs), index=runs.index, dtype=object)


def _is_trial(runs: pd.DataFrame) -> pd.Series:
    role = _column(runs, f"tags.{TAG_ROLE}")
    return (role == "trial") | (role.isna() & _column(runs, f"tags.{TAG_METHOD}").notna())


def find_experiments(client: MlflowClient, names: Sequence[str]) -> dict[str, str]:
    """Experiment id -> name for each name; ExperimentNotFound for a name the store does not have."""
    found = {}
    for name in names:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            known = sorted(e.name for e in client.search_experiments())
            raise ExperimentNotFound(f"no experiment named {name!r} (the store has: {', '.join(known) or 'none'})")
        found[experiment.experiment_id] = name
    return found


def parent_experiment(tracking_uri: str, parent_run_id: str) -> str:
    """The name of the experiment a sweep's parent run belongs to."""
    client = MlflowClient(tracking_uri)
    try:
        run = client.get_run(parent_run_id)
    except MlflowException as exc:
        raise ExperimentNotFound(f"no run with id {parent_run_id!r}") from exc
    return client.get_experiment(run.info.experiment_id).name


def experiments_with_trials(tracking_uri: str) -> list[str]:
    """Every experiment of the store that holds at least one trial run (finished or not), by name."""
    client = MlflowClient(tracking_uri)
    experiments = {e.experiment_id: e.name for e in client.search_experiments()}
    if not experiments:
        return []
    runs = _search(tracking_uri, list(experiments))
    if runs.empty:
        return []
    ids = runs.loc[_is_trial(runs), "experiment_id"].unique()
    return sorted(experiments[i] for i in ids)


def load_trials(tracking_uri: str, experiments: Sequence[str] = (), parent_run_id: str | None = None) -> Trials:
    """The trials of the named experiments; with parent_run_id, only that sweep's children, plus the
    dense runs its baselines were derived from (they serve as its reference)."""
    return trials_from_runs(search_experiment_runs(tracking_uri, experiments, parent_run_id), parent_run_id)


def search_experiment_runs(tracking_uri: str, experiments: Sequence[str] = (),
                           parent_run_id: str | None = None) -> pd.DataFrame:
    """Every run of the named experiments (of the parent run's experiment, with parent_run_id) as
    mlflow.search_runs gives them, with an `experiment` column: what trials_from_runs reads, and what a
    results bundle keeps."""
    client = MlflowClient(tracking_uri)
    if parent_run_id:
        name = parent_experiment(tracking_uri, parent_run_id)
        if experiments and list(experiments) != [name]:
            raise ExperimentNotFound(f"run {parent_run_id} belongs to experiment {name!r}, "
                                     f"not {', '.join(experiments)}")
        experiments = [name]
    names = find_experiments(client, experiments)
    runs = _search(tracking_uri, list(names))
    if runs.empty:
        runs = pd.DataFrame(columns=["run_id", "experiment_id", "status", "start_time"])
    runs["experiment"] = runs["experiment_id"].map(names)
    return runs


def trials_from_runs(runs: pd.DataFrame, parent_run_id: str | None = None) -> Trials:
    """The finished trials among `runs` (search_experiment_runs' table), typed and sorted, and the ones
    left out with the reason; with parent_run_id, only that sweep's children and their dense sources."""
    parent_of = _column(runs, "tags.mlflow.parentRunId")
    trials = runs[_is_trial(runs)]
    if parent_run_id:
        children = trials[parent_of[trials.index] == parent_run_id]
        sources = set(_column(children, f"tags.{TAG_SOURCE_DENSE_RUN}").dropna())
        trials = trials[(parent_of[trials.index] == parent_run_id) | trials["run_id"].isin(sources)]
        parents = {name: parent_run_id for name in runs["experiment"].unique()}
    else:
        parents = _latest_parents(runs)

    kind = trials["status"].map(STATUS_KIND)
    finished = trials["status"] == "FINISHED"
    complete = pd.Series(True, index=trials.index)
    for metric, col in METRICS.items():
        if col in REQUIRED:
            complete &= _column(trials, f"metrics.{metric}").notna()
    kind[finished & ~complete] = INCOMPLETE
    kind[~finished & kind.isna()] = UNFINISHED  # any other status MLflow may add
    excluded = pd.DataFrame({
        "experiment": trials["experiment"], "run_id": trials["run_id"],
        "run_name": _column(trials, "tags.mlflow.runName"), "status": trials["status"], "kind": kind,
        "reason": _column(trials, f"tags.{TAG_FAILURE_REASON}").fillna(""),
    })[~(finished & complete)].sort_values(["experiment", "run_name", "run_id"]).reset_index(drop=True)
    return Trials(frame=tidy(trials[finished & complete]), excluded=excluded, parents=parents)


def _latest_parents(runs: pd.DataFrame) -> dict[str, str]:
    parents = runs[_column(runs, f"tags.{TAG_ROLE}") == "parent"].sort_values(["start_time", "run_id"])
    return dict(zip(parents["experiment"], parents["run_id"]))  # later rows win: the latest start


def _numeric(values: pd.Series) -> pd.Series:
    return pd.to_numeric(values, errors="coerce").astype(float)


def _locations(tag: pd.Series, param: pd.Series, method: pd.Series) -> pd.Series:
    """"ffn+mhsa+conv" style, in the canonical order; "none" for methods without adaptive dropout."""
    def one(tag_value: object, param_value: object, method_value: object) -> str:
        if method_value != "adaptive_dropout":
            return "none"
        for text in (tag_value, param_value):  # the tag, else the configuration's list
            words = str(text or "").translate(str.maketrans("'\"+,[]", "      ")).split()
            if found := [loc for loc in LOCATIONS if loc in words]:
                return "+".join(found)
        return "none"
    return pd.Series([one(*v) for v in zip(tag, param, method)], index=tag.index, dtype=object)


def _settings(runs: pd.DataFrame, method: pd.Series) -> pd.Series:
    """A label of the parameters that vary between one method's trials and are not typed columns,
    e.g. "model.d_model=64"; empty when a method's trials differ only in the typed columns."""
    keys = sorted(c[len("params."):] for c in runs.columns if c.startswith("params."))
    keys = [k for k in keys if k not in BOOKKEEPING and k not in DESCRIBED and not k.startswith("tracking.")]
    labels = pd.Series("", index=runs.index, dtype=object)
    for name, rows in runs.groupby(method, sort=True):
        varied = [k for k in keys if not k.startswith(ignored_prefixes(name))
                  and rows[f"params.{k}"].astype(object).fillna("-").nunique() > 1]
        values = rows[[f"params.{k}" for k in varied]].astype(object).fillna("-")
        for idx, row in zip(rows.index, values.itertuples(index=False)):
            labels[idx] = ", ".join(f"{k}={v}" for k, v in zip(varied, row))
    return labels


def _sources(runs: pd.DataFrame, method: pd.Series) -> pd.Series:
    """retrain_pruned: the run whose architecture it trained, named without its seed, so that the retrainings
    of one setting's seeds form one setting (", source adl-...-budget0.5"); empty for other methods."""
    names = dict(zip(runs["run_id"], _column(runs, "tags.mlflow.runName")))
    source = _column(runs, "params.prune.source_run").fillna("")

    def label(run_id: str) -> str:
        name = names.get(run_id) or run_id[:8]
        return f", source {re.sub(r'-s[0-9]+$', '', name)}"
    return pd.Series([label(s) if m == RETRAIN_PRUNED else "" for s, m in zip(source, method)],
                     index=runs.index, dtype=object)


COLUMNS = ("experiment", "run_id", "run_name", "parent_run_id", "start_time", "method", "locations", "seed",
           "tau", "alpha", "threshold", "budget_params", "target_reduction", "adl_target_reduction", "setting",
           "epochs", "from_dense", "distill", "distill_hidden", "finetune_epochs", "ranking", "grid_point",
           *METRICS.values())
TEXT_COLUMNS = ("experiment", "run_id", "run_name", "parent_run_id", "method", "locations", "setting", "ranking")


def tidy(runs: pd.DataFrame) -> pd.DataFrame:
    """search_runs' wide table of strings -> one typed row per trial, sorted by setting then seed."""
    method = _column(runs, f"tags.{TAG_METHOD}").fillna(_column(runs, "params.method")).fillna("unknown")
    is_adl = method == "adaptive_dropout"
    is_baseline = ~method.isin(["dense", "adaptive_dropout"])
    budget = _numeric(_column(runs, f"tags.{TAG_BUDGET}"))
    budget = budget.fillna(_numeric(_column(runs, "params.prune.target_params")).where(lambda v: v > 0))
    reduction_target = _numeric(_column(runs, "params.prune.target_reduction")).where(lambda v: v > 0)
    controller_target = _numeric(_column(runs, "params.adl.target_reduction")).where(lambda v: is_adl & (v > 0))
    frame = pd.DataFrame({
        "experiment": runs["experiment"],
        "run_id": runs["run_id"],
        "run_name": _column(runs, "tags.mlflow.runName").fillna(runs["run_id"]),
        "parent_run_id": _column(runs, "tags.mlflow.parentRunId"),
        "start_time": pd.to_datetime(runs["start_time"], utc=True),
        "method": method,
        "locations": _locations(_column(runs, f"tags.{TAG_LOCATIONS}"), _column(runs, "params.adl.locations"), method),
        "seed": _numeric(_column(runs, f"tags.{TAG_SEED}").fillna(_column(runs, "params.train.seed"))).astype("Int64"),
        "tau": _numeric(_column(runs, "params.adl.tau")).where(is_adl),
        # the budget controller replaces the alpha term: its trials have no alpha to show
        "alpha": _numeric(_column(runs, "params.adl.alpha")).where(is_adl & controller_target.isna()),
        "threshold": _numeric(_column(runs, "params.adl.threshold")).where(is_adl),
        "budget_params": budget.where(is_baseline).round().astype("Int64"),
        "target_reduction": reduction_target.where(is_baseline),
        "adl_target_reduction": controller_target,  # the budget controller's target; NaN for the regulariser
        "setting": _settings(runs, method).str.cat(_sources(runs, method), sep="").str.strip(", "),
        "epochs": _numeric(_column(runs, "params.train.epochs")).astype("Int64"),
        # pruning a trained model: magnitude pruning always, adaptive dropout with adl.init = "dense"
        "from_dense": method.isin(PRUNES_DENSE) | (is_adl & (_column(runs, "params.adl.init") == "dense")),
        "grid_point": _column(runs, f"tags.{TAG_GRID_POINT}"),  # a search trial's sampled values (JSON)
        "distill": _numeric(_column(runs, "params.adl.distill")).where(  # the teacher's weight, either method's
            is_adl, _numeric(_column(runs, "params.prune.distill"))).fillna(0.0),
        "distill_hidden": _numeric(_column(runs, "params.adl.distill_hidden")).where(  # the block-output term's weight
            is_adl, _numeric(_column(runs, "params.prune.distill_hidden"))).fillna(0.0),
        # epochs training the pruned, fixed architecture (the controller's after its gates; a baseline's all)
        "finetune_epochs": _numeric(_column(runs, "params.adl.finetune_epochs")).where(
            is_adl, _numeric(_column(runs, "params.prune.finetune_epochs"))).fillna(0).astype("Int64"),
        # a structured baseline's pools: one per unit kind across blocks ("global") or per block ("uniform")
        "ranking": _column(runs, "params.prune.ranking").where(method.isin(STRUCTURED)),
    }, index=runs.index)
    for metric, col in METRICS.items():
        values = _numeric(_column(runs, f"metrics.{metric}"))
        frame[col] = values.round().astype("Int64") if col in INTEGER_METRICS else values
    for col in TEXT_COLUMNS:
        frame[col] = frame[col].astype("string")
    return sort_rows(frame).reset_index(drop=True)[list(COLUMNS)]


def method_rank(method: pd.Series) -> pd.Series:
    """The order methods appear in tables and legends: dense first, unknown methods last."""
    return method.map(lambda m: REPORT_ORDER.index(m) if m in REPORT_ORDER else len(REPORT_ORDER)).astype(int)


def locations_rank(locations: pd.Series) -> pd.Series:
    return locations.map(lambda s: LOCATION_SUBSETS.index(s) if s in LOCATION_SUBSETS else len(LOCATION_SUBSETS))


def sort_rows(frame: pd.DataFrame, then: Sequence[str] = ("seed", "run_name", "run_id")) -> pd.DataFrame:
    """Rows in a fixed order (method, locations, budget, hyperparameters, setting, then `then`),
    so every table made from the same runs is the same file."""
    keys = frame.assign(_method=method_rank(frame["method"]), _locations=locations_rank(frame["locations"]))
    by = ["experiment", "_method", "method", "_locations", "budget_params", "target_reduction", "tau", "alpha",
          "setting", *[c for c in then if c in frame.columns]]
    order = keys.sort_values(by, kind="mergesort", na_position="first").index
    return frame.loc[order]


# Everything that identifies a setting: the trials of one setting differ only in their seed.
SETTING_KEYS = ("experiment", "method", "locations", "budget_params", "target_reduction", "adl_target_reduction",
                "tau", "alpha", "setting")
VALUES = ("params", "reduction", "dev_wer", "test_wer", "flops", "latency_ms", "epochs_total", "polarised", "dev_wer_uncut")


def seed_groups(frame: pd.DataFrame, keys: Sequence[str] = SETTING_KEYS,
                values: Sequence[str] = VALUES) -> pd.DataFrame:
    """One row per setting: the keys, n (trials), seeds ("0,1"), run_ids (a tuple) and <value>_mean,
    _std, _min and _max.

    The std is the sample standard deviation (NaN for a single trial); rows keep the table order.
    """
    rows = []
    for _, trials in frame.groupby(list(keys), dropna=False, sort=False):
        row = {key: trials[key].iloc[0] for key in keys}
        row["n"] = len(trials)
        row["seeds"] = ",".join(str(s) for s in sorted(trials["seed"].dropna().unique()))
        row["run_ids"] = tuple(sorted(trials["run_id"]))
        for value in values:
            column = trials[value].astype(float)
            row |= {f"{value}_mean": column.mean(), f"{value}_std": column.std(ddof=1),
                    f"{value}_min": column.min(), f"{value}_max": column.max()}
        rows.append(row)
    columns = [*keys, "n", "seeds", "run_ids", *(f"{v}_{s}" for v in values for s in ("mean", "std", "min", "max"))]
    groups = pd.DataFrame(rows, columns=columns)
    for key in keys:  # keep the typed columns' dtypes (an all-NaN float column would otherwise turn object)
        groups[key] = groups[key].astype(frame[key].dtype)
    return sort_rows(groups, then=()).reset_index(drop=True) if set(SETTING_KEYS) <= set(keys) else groups
