"""The tables, as CSV (for scripts) and Markdown (for people): the ablation table of every setting,
and the Pareto-optimal trials of each method (`pareto_mask`, `front`: both coordinates minimised).

Rows are sorted and every number has a fixed format, so tables regenerated from the same runs are
byte-identical files.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from analysis import bootstrap
from analysis.plotting import write_text
from analysis.runs import method_rank, seed_groups
from study.names import ADAPTIVE_DROPOUT

UtteranceErrors = dict[str, tuple[np.ndarray, np.ndarray]]  # run id -> (word edits, reference words) per utterance


def pareto_mask(x: ArrayLike, y: ArrayLike) -> np.ndarray:
    """True for each point that no other point dominates, minimising both x and y.

    A point is dominated when another is no worse in both coordinates and better in at least one.
    Identical points do not dominate each other, so duplicates on the front are all kept. Points with
    a NaN coordinate are never on the front.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D arrays of one length, got shapes {x.shape} and {y.shape}")
    mask = np.zeros(x.shape, dtype=bool)
    valid = np.flatnonzero(~(np.isnan(x) | np.isnan(y)))
    order = valid[np.lexsort((y[valid], x[valid]))]  # by x, then y
    # Sweeping by x then y, every earlier distinct point has x no larger, so it dominates this one
    # exactly when its y is no larger: track the smallest y over earlier distinct points.
    best_y, start = np.inf, 0
    while start < len(order):
        end = start
        while end < len(order) and x[order[end]] == x[order[start]] and y[order[end]] == y[order[start]]:
            end += 1  # a run of identical points shares one verdict
        here = y[order[start]]
        mask[order[start:end]] = here < best_y
        best_y = min(best_y, here)
        start = end
    return mask


def front(x: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """The front's points sorted by x, ready to draw as a step line."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    on = pareto_mask(x, y)
    order = np.lexsort((y[on], x[on]))
    return x[on][order], y[on][order]


# Setting columns left out of a table when no row has a value (a sweep without baselines, say).
OPTIONAL = ("budget_params", "target_reduction_pct", "tau", "alpha", "setting", "epochs_total", "epochs_total_mean",
            "polarised_pct", "polarised_pct_mean", "dev_wer_uncut_pct", "dev_wer_uncut_pct_mean",
            "test_wer_ci_low_pct", "test_wer_ci_high_pct")



def _blank(value: object) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def fixed_digits(digits: int, scale: float = 1.0) -> Callable[[object], str]:
    return lambda v: "" if _blank(v) else f"{float(v) * scale:.{digits}f}"


def _integer(v: object) -> str:
    return "" if _blank(v) else str(int(round(float(v))))


def _short(v: object) -> str:
    return "" if _blank(v) else f"{float(v):g}"


def as_text(v: object) -> str:
    return "" if _blank(v) else str(v)


@dataclass
class Column:
    name: str  # CSV header
    header: str  # Markdown header
    source: str  # column of the frame it comes from
    format: Callable[[object], str]
    spread: str = ""  # a column whose value follows as "± spread" in the Markdown cell


@dataclass
class Table:
    columns: list[Column]
    rows: pd.DataFrame  # the source columns, in output order

    def cells(self) -> dict[str, list[str]]:
        return {c.name: [c.format(v) for v in self.rows[c.source]] for c in self.columns}

    def csv(self) -> str:
        return pd.DataFrame(self.cells(), dtype=str).to_csv(index=False, lineterminator="\n")

    def markdown(self) -> str:
        cells = self.cells()
        shown = [c for c in self.columns if c.name not in {s.spread for s in self.columns if s.spread}]
        lines = ["| " + " | ".join(c.header for c in shown) + " |",
                 "| " + " | ".join("---:" if c.format is not as_text else "---" for c in shown) + " |"]
        for i in range(len(self.rows)):
            row = []
            for c in shown:
                cell = cells[c.name][i]
                spread = cells[c.spread][i] if c.spread else ""
                row.append((f"{cell} ± {spread}" if spread else cell).replace("|", "\\|"))
            lines.append("| " + " | ".join(row) + " |")
        return "\n".join(lines) + "\n"


def _present(columns: list[Column], rows: pd.DataFrame) -> list[Column]:
    """Drops optional setting columns that are empty in every row."""
    return [c for c in columns if c.name not in OPTIONAL or any(not _blank(v) and v != "" for v in rows[c.source])]


SETTING_COLUMNS = [
    Column("method", "Method", "method", as_text),
    Column("locations", "ADL locations", "locations", as_text),
    Column("budget_params", "Budget (params)", "budget_params", _integer),
    Column("target_reduction_pct", "Target reduction (%)", "target_reduction", fixed_digits(1, 100)),
    Column("tau", "τ", "tau", _short),
    Column("alpha", "α", "alpha", _short),
    Column("setting", "Other settings", "setting", as_text),
]


def _ci_columns() -> list[Column]:
    return [Column("test_wer_ci_low_pct", "95% CI low (%)", "test_wer_ci_low", fixed_digits(2, 100)),
            Column("test_wer_ci_high_pct", "95% CI high (%)", "test_wer_ci_high", fixed_digits(2, 100))]


def with_intervals(rows: pd.DataFrame, errors: UtteranceErrors | None) -> pd.DataFrame:
    """Adds test_wer_ci_low/high: the bootstrap interval of each row's (seed-mean) test WER over its
    runs (`run_ids`, a tuple, or `run_id`); NaN where a run has no per-utterance errors."""
    rows = rows.copy()
    rows["test_wer_ci_low"], rows["test_wer_ci_high"] = np.nan, np.nan
    if not errors:
        return rows
    idx = bootstrap.resamples(len(next(iter(errors.values()))[0]))
    for i, ids in zip(rows.index, _run_ids(rows)):
        if all(r in errors for r in ids):
            rows.loc[i, ["test_wer_ci_low", "test_wer_ci_high"]] = bootstrap.interval([errors[r] for r in ids], idx)
    return rows


def _run_ids(rows: pd.DataFrame) -> list[tuple[str, ...]]:
    return list(rows["run_ids"]) if "run_ids" in rows else [(r,) for r in rows["run_id"]]


def ablation_table(frame: pd.DataFrame, errors: UtteranceErrors | None = None) -> Table:
    """One row per setting (location subset or baseline, with its budget and hyperparameters): size,
    dev and test WER as mean and std over seeds with the bootstrap interval of the test WER, FLOPs,
    latency, training epochs, the ADL diagnostics and the number of trials."""
    groups = with_intervals(seed_groups(frame), errors)
    columns = SETTING_COLUMNS + [
        Column("n_runs", "n", "n", _integer),
        Column("seeds", "Seeds", "seeds", as_text),
        Column("params_mean", "Params", "params_mean", _integer),
        Column("reduction_pct_mean", "Reduction (%)", "reduction_mean", fixed_digits(1, 100)),
        Column("dev_wer_pct_mean", "Dev WER (%)", "dev_wer_mean", fixed_digits(2, 100), spread="dev_wer_pct_std"),
        Column("dev_wer_pct_std", "", "dev_wer_std", fixed_digits(2, 100)),
        Column("test_wer_pct_mean", "Test WER (%)", "test_wer_mean", fixed_digits(2, 100), spread="test_wer_pct_std"),
        Column("test_wer_pct_std", "", "test_wer_std", fixed_digits(2, 100)),
        *_ci_columns(),
        Column("encoder_mflops_10s_mean", "Encoder MFLOPs (10 s)", "flops_mean", fixed_digits(1, 1e-6)),
        Column("latency_ms_mean", "Latency (ms)", "latency_ms_mean", fixed_digits(2)),
        Column("epochs_total_mean", "Epochs", "epochs_total_mean", _integer),
        Column("dev_wer_uncut_pct_mean", "Dev WER before cut (%)", "dev_wer_uncut_mean", fixed_digits(2, 100)),
        Column("polarised_pct_mean", "Polarised (%)", "polarised_mean", fixed_digits(1, 100)),
    ]
    return Table(_present(columns, groups), groups)


def pareto_table(frame: pd.DataFrame, errors: UtteranceErrors | None = None) -> Table:
    """The trials on their method's Pareto front of parameters against test WER."""
    on_front = pd.Series(False, index=frame.index)
    for _, trials in frame.groupby("method"):
        on_front[trials.index] = pareto_mask(trials["params"].astype(float), trials["test_wer"])
    rows = frame[on_front].assign(_rank=method_rank(frame["method"]))
    rows = rows.sort_values(["_rank", "method", "params", "test_wer", "run_id"], kind="mergesort")
    columns = SETTING_COLUMNS + [
        Column("seed", "Seed", "seed", _integer),
        Column("run_name", "Run", "run_name", as_text),
        Column("params", "Params", "params", _integer),
        Column("reduction_pct", "Reduction (%)", "reduction", fixed_digits(1, 100)),
        Column("dev_wer_pct", "Dev WER (%)", "dev_wer", fixed_digits(2, 100)),
        Column("test_wer_pct", "Test WER (%)", "test_wer", fixed_digits(2, 100)),
        *_ci_columns(),
        Column("encoder_mflops_10s", "Encoder MFLOPs (10 s)", "flops", fixed_digits(1, 1e-6)),
        Column("latency_ms", "Latency (ms)", "latency_ms", fixed_digits(2)),
        Column("epochs_total", "Epochs", "epochs_total", _integer),
        Column("dev_wer_uncut_pct", "Dev WER before cut (%)", "dev_wer_uncut", fixed_digits(2, 100)),
        Column("polarised_pct", "Polarised (%)", "polarised", fixed_digits(1, 100)),
        Column("run_id", "Run id", "run_id", as_text),
    ]
    rows = with_intervals(rows.reset_index(drop=True), errors)
    return Table(_present(columns, rows), rows)


BUDGET_TOLERANCE = 0.02  # a baseline is at the same budget when its mean reduction is this close


def _label(row: pd.Series) -> str:
    parts = [str(row["method"])]
    if row["method"] == ADAPTIVE_DROPOUT:
        parts += [str(row["locations"]), *(f"{k}={_short(row[k])}" for k in ("tau", "alpha") if not _blank(row[k]))]
    elif not _blank(row["target_reduction"]):
        parts.append(f"target {float(row['target_reduction']):.0%}")
    if not _blank(row["setting"]) and row["setting"]:
        parts.append(str(row["setting"]))
    return " ".join(parts)


def comparison_table(frame: pd.DataFrame, errors: UtteranceErrors) -> Table:
    """Each adaptive-dropout setting against dense and against every baseline setting at the same
    budget (mean reductions within BUDGET_TOLERANCE): both test WERs, their difference and the paired
    bootstrap probability that adaptive dropout is better (Bisani and Ney 2004)."""
    groups = seed_groups(frame)
    covered = [all(r in errors for r in ids) for ids in groups["run_ids"]]
    groups = groups[covered].reset_index(drop=True)
    idx = bootstrap.resamples(len(next(iter(errors.values()))[0])) if errors else None
    rows = []
    for _, a in groups[groups["method"] == ADAPTIVE_DROPOUT].iterrows():
        for _, b in groups[groups["method"] != ADAPTIVE_DROPOUT].iterrows():
            if b["method"] != "dense" and abs(b["reduction_mean"] - a["reduction_mean"]) > BUDGET_TOLERANCE:
                continue
            rows.append({"adl": _label(a), "baseline": _label(b), "adl_reduction": a["reduction_mean"],
                         "baseline_reduction": b["reduction_mean"], "adl_test_wer": a["test_wer_mean"],
                         "baseline_test_wer": b["test_wer_mean"],
                         "difference": a["test_wer_mean"] - b["test_wer_mean"],
                         "p_adl_better": bootstrap.probability_better([errors[r] for r in a["run_ids"]],
                                                                     [errors[r] for r in b["run_ids"]], idx),
                         "seeds": f"{a['n']}/{b['n']}"})
    table = pd.DataFrame(rows, columns=["adl", "baseline", "adl_reduction", "baseline_reduction", "adl_test_wer",
                                        "baseline_test_wer", "difference", "p_adl_better", "seeds"])
    columns = [Column("adl", "Adaptive dropout", "adl", as_text), Column("baseline", "Baseline", "baseline", as_text),
               Column("adl_reduction_pct", "ADL reduction (%)", "adl_reduction", fixed_digits(1, 100)),
               Column("baseline_reduction_pct", "Baseline reduction (%)", "baseline_reduction", fixed_digits(1, 100)),
               Column("adl_test_wer_pct", "ADL test WER (%)", "adl_test_wer", fixed_digits(2, 100)),
               Column("baseline_test_wer_pct", "Baseline test WER (%)", "baseline_test_wer", fixed_digits(2, 100)),
               Column("difference_pct", "Difference (points)", "difference", fixed_digits(2, 100)),
               Column("p_adl_better", "P(ADL better)", "p_adl_better", fixed_digits(3)),
               Column("seeds", "Seeds (ADL/baseline)", "seeds", as_text)]
    return Table(columns, table)


def write_table(table: Table, stem: Path, note: str = "") -> list[Path]:
    """stem.csv and stem.md (with `note`, e.g. the provenance card, under the table), each written whole
    or not at all."""
    return [write_text(stem.with_suffix(".csv"), table.csv()),
            write_text(stem.with_suffix(".md"), markdown_text(table, note))]


def markdown_text(table: Table, note: str = "") -> str:
    """A table's Markdown file: the table, then `note` (the provenance card) under it."""
    return table.markdown() + (f"\n{note}\n" if note else "")

