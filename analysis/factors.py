"""The ablation's answer, one factor at a time: where adaptive dropout sits, its temperature τ and its
penalty weight α, each varied around a centre point with the other two held there.

The centre is the value of each factor that the most settings share (in a one-factor-at-a-time design
the centre's value of a factor is held while the other factors vary, so it outnumbers every other
value). Each row is one setting, pooled over its seeds, against the centre: its reduction, the dev WER
before and after the threshold cut (their difference is the cut's cost), the test WER with its 95%
bootstrap interval, the share of polarised units, and the paired bootstrap probability that it beats
the centre; and against structured magnitude pruning matched to its runs' sizes, when the sweep has it.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import bootstrap
from analysis.figures import Skipped
from analysis.runs import locations_rank, seed_groups
from analysis.tables import Column, Table, UtteranceErrors, as_text, fixed_digits, with_intervals
from study.names import ADAPTIVE_DROPOUT

FACTORS = {"locations": "locations", "tau": "temperature τ", "alpha": "penalty weight α"}
RESOLVED = 0.95  # a paired bootstrap probability beyond this (or below 1 - this) resolves an effect


def centre(groups: pd.DataFrame) -> dict[str, object]:
    """Each factor's most common value among the settings; Skipped when one has no single such value."""
    found = {}
    for factor in FACTORS:
        counts = groups[factor].value_counts()
        if len(counts) > 1 and counts.iloc[0] == counts.iloc[1]:
            raise Skipped(f"no centre point: {factor} values {counts.index[0]} and {counts.index[1]} are held "
                          f"equally often (not a one-factor-at-a-time design)")
        found[factor] = counts.index[0]
    return found


def _regulariser_settings(frame: pd.DataFrame) -> pd.DataFrame:
    """Adaptive dropout with the paper's regulariser (an α), at the most common other settings."""
    adl = frame[(frame["method"] == ADAPTIVE_DROPOUT) & frame["alpha"].notna()]
    if adl.empty:
        raise Skipped("no finished adaptive_dropout trial with the paper's regulariser (adl.alpha)")
    common = adl["setting"].value_counts().index[0]
    return seed_groups(adl[adl["setting"] == common])


def _verdict(p: float, seeds: int) -> str:
    """Better, worse or within noise against the centre; no effect is claimed from one seed."""
    if np.isnan(p):
        return ""
    if seeds < 2:
        return "one seed: not claimed"
    return "better" if p > RESOLVED else "worse" if p < 1 - RESOLVED else "within noise"


def _matched_magnitude(frame: pd.DataFrame, run_ids: tuple[str, ...]) -> tuple[str, ...]:
    """The structured magnitude runs (no fine-tuning) pruned to the size of one of these runs."""
    sizes = set(frame.loc[frame["run_id"].isin(run_ids), "params"].astype(int))
    magnitude = frame[(frame["method"] == "magnitude_structured") & (frame["epochs_total"] == frame["epochs"])]
    return tuple(sorted(magnitude.loc[magnitude["budget_params"].isin(sizes), "run_id"]))


def factor_rows(frame: pd.DataFrame, errors: UtteranceErrors) -> pd.DataFrame:
    """One row per (factor, value) around the centre, the centre itself under every factor."""
    groups = with_intervals(_regulariser_settings(frame), errors)
    middle = centre(groups)
    idx = bootstrap.resamples(len(next(iter(errors.values()))[0])) if errors else None

    def runs(ids: tuple[str, ...]) -> list:
        return [errors[r] for r in ids] if errors and all(r in errors for r in ids) else []

    at_centre = groups[np.logical_and.reduce([groups[f] == v for f, v in middle.items()])]
    if at_centre.empty:
        raise Skipped(f"no setting at the centre point {middle}")
    reference = at_centre.iloc[0]
    rows = []
    for factor in FACTORS:
        held = np.logical_and.reduce([groups[f] == v for f, v in middle.items() if f != factor])
        line = groups[held]
        if line[factor].nunique() < 2:
            continue
        order = locations_rank(line["locations"]) if factor == "locations" else line[factor].astype(float)
        for _, row in line.iloc[np.argsort(order.to_numpy(), kind="stable")].iterrows():
            is_centre = row["run_ids"] == reference["run_ids"]
            mine, theirs = runs(row["run_ids"]), runs(reference["run_ids"])
            p = np.nan if is_centre or not (mine and theirs) else bootstrap.probability_better(mine, theirs, idx)
            magnitude = _matched_magnitude(frame, row["run_ids"])
            rivals = runs(magnitude) if magnitude else []
            rows.append({
                "factor": FACTORS[factor], "value": _value(factor, row[factor]) + (" (centre)" if is_centre else ""),
                "n": row["n"], "reduction": row["reduction_mean"], "dev_uncut": row["dev_wer_uncut_mean"],
                "dev": row["dev_wer_mean"], "cut_cost": row["dev_wer_mean"] - row["dev_wer_uncut_mean"],
                "test": row["test_wer_mean"], "test_std": row["test_wer_std"], "low": row["test_wer_ci_low"],
                "high": row["test_wer_ci_high"], "polarised": row["polarised_mean"],
                "vs_centre": np.nan if is_centre else row["test_wer_mean"] - reference["test_wer_mean"],
                "p_centre": p, "verdict": "" if is_centre else _verdict(p, min(row["n"], reference["n"])),
                "magnitude": frame.loc[frame["run_id"].isin(magnitude), "test_wer"].mean() if magnitude else np.nan,
                "p_magnitude": bootstrap.probability_better(mine, rivals, idx) if mine and rivals else np.nan,
            })
    if not rows:
        raise Skipped(f"no factor was varied around the centre point {middle}")
    return pd.DataFrame(rows)


def _value(factor: str, value: object) -> str:
    return str(value) if factor == "locations" else f"{float(value):g}"


def factor_table(frame: pd.DataFrame, errors: UtteranceErrors) -> Table:
    rows = factor_rows(frame, errors)
    pct = fixed_digits(2, 100)  # WERs in percent, differences in points
    columns = [Column("factor", "Factor", "factor", as_text), Column("value", "Value", "value", as_text),
               Column("n_runs", "n", "n", fixed_digits(0)),
               Column("reduction_pct", "Reduction (%)", "reduction", fixed_digits(1, 100)),
               Column("dev_wer_uncut_pct", "Dev WER before cut (%)", "dev_uncut", pct),
               Column("dev_wer_pct", "Dev WER after cut (%)", "dev", pct),
               Column("cut_cost_points", "Cut's cost (points)", "cut_cost", pct),
               Column("test_wer_pct", "Test WER (%)", "test", pct, spread="test_wer_pct_std"),
               Column("test_wer_pct_std", "", "test_std", pct),
               Column("test_wer_ci_low_pct", "95% CI low", "low", pct),
               Column("test_wer_ci_high_pct", "95% CI high", "high", pct),
               Column("polarised_pct", "Polarised (%)", "polarised", fixed_digits(1, 100)),
               Column("vs_centre_points", "Test vs centre (points)", "vs_centre", pct),
               Column("p_better_than_centre", "P(better than centre)", "p_centre", fixed_digits(3)),
               Column("verdict", "Against the centre", "verdict", as_text),
               Column("matched_magnitude_test_wer_pct", "Matched magnitude test WER (%)", "magnitude", pct),
               Column("p_better_than_magnitude", "P(better than magnitude)", "p_magnitude", fixed_digits(3))]
    return Table(columns, rows)
