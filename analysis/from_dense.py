"""Pruning a trained model (experiments/prune_trained.toml): adaptive dropout started from the dense model
against magnitude pruning given the same extra epochs k and the same distillation weight.

The question is the pruning literature's: with a trained model and k more epochs, which method leaves the
better model at a given size? So a comparison pairs settings at the same budget (the target asked for),
the same k (epochs beyond the dense recipe's) and the same teacher weight, never across them. Every
pruned setting is also read against two dense references: the dense model it started from (the recipe's
epochs) and, where the sweep trained one, a dense model trained for the same total epochs (dense + k),
without which a gain over dense cannot be told from the extra training.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis import bootstrap
from analysis.figures import Skipped
from analysis.plotting import CONTROLLER, method_look, new_figure
from analysis.runs import seed_groups
from analysis.tables import Column, Table, UtteranceErrors, fixed_digits, as_text, with_intervals
from study.names import ADAPTIVE_DROPOUT, PRUNES_DENSE


def settings(frame: pd.DataFrame) -> pd.DataFrame:
    """The from-dense settings (seed_groups rows) with their budget, k and teacher weight; the budget is
    the reduction asked for (adl.target_reduction or prune.target_reduction)."""
    started = frame[frame["from_dense"].astype(bool)]
    if started.empty or not (started["method"] == ADAPTIVE_DROPOUT).any():
        raise Skipped("no adaptive-dropout trial started from a dense model (adl.init = \"dense\")")
    groups = seed_groups(started)
    first = started.set_index("run_id")
    rows = [first.loc[ids[0]] for ids in groups["run_ids"]]
    groups["k"] = [int(r["epochs_total"] - r["epochs"]) for r in rows]
    groups["epochs"] = [int(r["epochs"]) for r in rows]
    groups["distill"] = [float(r["distill"]) for r in rows]
    groups["distill_hidden"] = [float(r["distill_hidden"]) for r in rows]
    groups["finetune_epochs"] = [int(r["finetune_epochs"]) for r in rows]
    groups["ranking"] = [r["ranking"] for r in rows]
    groups["budget"] = groups["adl_target_reduction"].fillna(groups["target_reduction"]).round(4)
    groups["kind"] = groups["method"].mask(groups["method"] == ADAPTIVE_DROPOUT, CONTROLLER)
    return groups[groups["budget"].notna()].reset_index(drop=True)


def _name(row: pd.Series) -> str:
    """E.g. "adaptive dropout, budget controller, distilled (1), blocks (1), then fine-tuned": the teacher's
    output and block-output weights, whether the controller's gates were fixed for the last epochs, and
    a structured baseline's per-block pools ("ranked per block"; the default, one pool per kind, unnamed)."""
    return (method_look(row["kind"])[2] + (", ranked per block" if str(row["ranking"]) == "uniform" else "")
            + (f", distilled ({row['distill']:g})" if row["distill"] else "")
            + (f", blocks ({row['distill_hidden']:g})" if row["distill_hidden"] else "")
            + (", then fine-tuned" if _fixed_at_the_end(row) else ""))


def _fixed_at_the_end(row: pd.Series) -> bool:
    """A controller setting whose last epochs fine-tuned the pruned architecture with its gates fixed."""
    return bool(row["kind"] == CONTROLLER and row["finetune_epochs"] > 0)


def equal_training_table(frame: pd.DataFrame, errors: UtteranceErrors) -> Table:
    """Each controller-from-dense setting against each magnitude baseline at the same budget, k and teacher
    weight: both test WERs (seed means) with their 95% bootstrap intervals, the difference and the paired
    bootstrap probability that the controller is better."""
    groups = with_intervals(settings(frame), errors)
    covered = groups["run_ids"].map(lambda ids: all(r in errors for r in ids))
    idx = bootstrap.resamples(len(next(iter(errors.values()))[0])) if errors else None
    rows = []
    for _, a in groups[groups["method"] == ADAPTIVE_DROPOUT].iterrows():
        same = (groups["method"].isin(PRUNES_DENSE) & (groups["budget"] == a["budget"]) & (groups["k"] == a["k"])
                & (groups["distill"] == a["distill"]) & (groups["distill_hidden"] == a["distill_hidden"]))
        for i, b in groups[same].iterrows():
            p = (bootstrap.probability_better([errors[r] for r in a["run_ids"]], [errors[r] for r in b["run_ids"]], idx)
                 if covered[a.name] and covered[i] else np.nan)
            rows.append({"budget": a["budget"], "k": a["k"], "distill": a["distill"], "baseline": _name(b),
                         "adl_reduction": a["reduction_mean"], "baseline_reduction": b["reduction_mean"],
                         "adl_wer": a["test_wer_mean"], "adl_low": a["test_wer_ci_low"], "adl_high": a["test_wer_ci_high"],
                         "baseline_wer": b["test_wer_mean"], "baseline_low": b["test_wer_ci_low"],
                         "baseline_high": b["test_wer_ci_high"], "difference": a["test_wer_mean"] - b["test_wer_mean"],
                         "p": p, "seeds": f"{a['n']}/{b['n']}"})
    table = pd.DataFrame(rows, columns=["budget", "k", "distill", "baseline", "adl_reduction", "baseline_reduction",
                                        "adl_wer", "adl_low", "adl_high", "baseline_wer", "baseline_low",
                                        "baseline_high", "difference", "p", "seeds"])
    pct = fixed_digits(2, 100)
    columns = [Column("target_reduction_pct", "Target (%)", "budget", fixed_digits(0, 100)),
               Column("k", "k (epochs)", "k", fixed_digits(0)), Column("distill", "Distillation", "distill", fixed_digits(1)),
               Column("baseline", "Baseline", "baseline", as_text),
               Column("adl_reduction_pct", "Controller reduction (%)", "adl_reduction", fixed_digits(1, 100)),
               Column("baseline_reduction_pct", "Baseline reduction (%)", "baseline_reduction", fixed_digits(1, 100)),
               Column("adl_test_wer_pct", "Controller test WER (%)", "adl_wer", pct),
               Column("adl_ci_low_pct", "CI low", "adl_low", pct), Column("adl_ci_high_pct", "CI high", "adl_high", pct),
               Column("baseline_test_wer_pct", "Baseline test WER (%)", "baseline_wer", pct),
               Column("baseline_ci_low_pct", "CI low", "baseline_low", pct),
               Column("baseline_ci_high_pct", "CI high", "baseline_high", pct),
               Column("difference_pct", "Difference (points)", "difference", pct),
               Column("p_controller_better", "P(controller better)", "p", fixed_digits(3)),
               Column("seeds", "Seeds", "seeds", as_text)]
    return Table(columns, table)


def dense_runs(frame: pd.DataFrame, epochs: int) -> list[str]:
    """The dense runs trained for `epochs` (the recipe's, or the recipe's + k)."""
    dense = frame[(frame["method"] == "dense") & (frame["epochs"].astype(float) == epochs)]
    return list(dense["run_id"])


def _setting_columns(label: Column) -> list[Column]:
    """The columns a per-setting table starts with: target, k, `label`, reduction, test WER and its interval."""
    pct = fixed_digits(2, 100)
    return [Column("target_reduction_pct", "Target (%)", "budget", fixed_digits(0, 100)),
            Column("k", "k (epochs)", "k", fixed_digits(0)), label,
            Column("reduction_pct", "Reduction (%)", "reduction", fixed_digits(1, 100)),
            Column("test_wer_pct", "Test WER (%)", "wer", pct),
            Column("ci_low_pct", "CI low", "low", pct), Column("ci_high_pct", "CI high", "high", pct)]


def dense_references_table(frame: pd.DataFrame, errors: UtteranceErrors) -> Table:
    """Every from-dense setting (controller and baselines) against dense at the recipe's epochs and dense
    trained for the same total epochs (dense + k): test WERs, differences and paired bootstrap probabilities
    that the pruned model is better."""
    groups = with_intervals(settings(frame), errors)
    wer = frame.set_index("run_id")["test_wer"].astype(float)
    idx = bootstrap.resamples(len(next(iter(errors.values()))[0])) if errors else None

    def against(ids: tuple[str, ...], reference: list[str]) -> tuple[float, float]:
        """(the reference's seed-mean WER, P(pruned better)); NaN where there is no reference or no errors."""
        if not reference:
            return np.nan, np.nan
        covered = idx is not None and all(r in errors for r in (*ids, *reference))
        p = bootstrap.probability_better([errors[r] for r in ids], [errors[r] for r in reference], idx) if covered else np.nan
        return float(wer[reference].mean()), p

    rows = []
    for _, g in groups.iterrows():
        dense_wer, p_dense = against(g["run_ids"], dense_runs(frame, g["epochs"]))
        longer_wer, p_longer = against(g["run_ids"], dense_runs(frame, g["epochs"] + g["k"]))
        rows.append({"budget": g["budget"], "k": g["k"], "setting": _name(g), "reduction": g["reduction_mean"],
                     "wer": g["test_wer_mean"], "low": g["test_wer_ci_low"], "high": g["test_wer_ci_high"],
                     "dense_wer": dense_wer, "over_dense": g["test_wer_mean"] - dense_wer, "p_dense": p_dense,
                     "longer_wer": longer_wer, "over_longer": g["test_wer_mean"] - longer_wer, "p_longer": p_longer,
                     "seeds": str(g["n"])})
    table = pd.DataFrame(rows, columns=["budget", "k", "setting", "reduction", "wer", "low", "high", "dense_wer",
                                        "over_dense", "p_dense", "longer_wer", "over_longer", "p_longer", "seeds"])
    table = table.sort_values(["budget", "k", "setting"], kind="stable").reset_index(drop=True)
    pct = fixed_digits(2, 100)
    columns = [*_setting_columns(Column("setting", "Setting", "setting", as_text)),
               Column("dense_test_wer_pct", "Dense (%)", "dense_wer", pct),
               Column("over_dense_pct", "Over dense (points)", "over_dense", pct),
               Column("p_better_than_dense", "P(better than dense)", "p_dense", fixed_digits(3)),
               Column("dense_k_test_wer_pct", "Dense + k (%)", "longer_wer", pct),
               Column("over_dense_k_pct", "Over dense + k (points)", "over_longer", pct),
               Column("p_better_than_dense_k", "P(better than dense + k)", "p_longer", fixed_digits(3)),
               Column("seeds", "Seeds", "seeds", as_text)]
    return Table(columns, table)


def headline_table(frame: pd.DataFrame, errors: UtteranceErrors) -> Table:
    """A short table for a front page: dense and dense + k, then every from-dense setting, each with its
    test WER (seed mean) and 95% bootstrap interval, and the pruned ones with their difference from, and
    paired bootstrap probability of being better than, both dense references (dense_references_table's)."""
    references = dense_references_table(frame, errors).rows
    wer = frame.set_index("run_id")["test_wer"].astype(float)
    recipe = int(settings(frame)["epochs"].min())
    dense = []
    for label, epochs in (("dense", recipe), *(("dense + k", recipe + k) for k in sorted(references["k"].unique()))):
        if ids := dense_runs(frame, epochs):
            dense.append({"setting": f"{label}, {epochs} epochs", "reduction": 0.0, "wer": float(wer[ids].mean()),
                          "run_ids": tuple(ids), "seeds": str(len(ids))})
    dense = with_intervals(pd.DataFrame(dense), errors).rename(columns={"test_wer_ci_low": "low",
                                                                         "test_wer_ci_high": "high"})
    table = pd.concat([dense.drop(columns="run_ids"), references], ignore_index=True)
    table["interval"] = [f"{100 * lo:.2f}-{100 * hi:.2f}" if np.isfinite(lo) else ""
                         for lo, hi in zip(table["low"], table["high"])]
    pct = fixed_digits(2, 100)
    columns = [Column("target_reduction_pct", "Target (%)", "budget", fixed_digits(0, 100)),
               Column("setting", "Setting", "setting", as_text),
               Column("reduction_pct", "Reduction (%)", "reduction", fixed_digits(1, 100)),
               Column("test_wer_pct", "Test WER (%)", "wer", pct), Column("ci_pct", "95% CI", "interval", as_text),
               Column("over_dense_pct", "Over dense (points)", "over_dense", pct),
               Column("p_better_than_dense", "P(better than dense)", "p_dense", fixed_digits(3)),
               Column("over_dense_k_pct", "Over dense + k (points)", "over_longer", pct),
               Column("p_better_than_dense_k", "P(better than dense + k)", "p_longer", fixed_digits(3)),
               Column("seeds", "Seeds", "seeds", as_text)]
    return Table(columns, table)


# What the controller adds to pruning from dense, by the settings column that switches it off at 0
ADDITIONS = (("distill", "output KL"), ("distill_hidden", "block outputs"), ("finetune_epochs", "fixed fine-tuning"))


def additions_table(frame: pd.DataFrame, errors: UtteranceErrors) -> Table:
    """What each addition buys the controller from dense: at each budget and k, every controller setting
    against the one with all of them (a teacher's output KL and block outputs, and fine-tuning the fixed
    architecture at the end), with what it leaves out, its test WER (seed mean, 95% bootstrap interval),
    the difference and the paired bootstrap probability that the setting with every addition is better."""
    groups = with_intervals(settings(frame), errors)
    idx = bootstrap.resamples(len(next(iter(errors.values()))[0])) if errors else None
    rows = []
    for (budget, k), same in groups[groups["method"] == ADAPTIVE_DROPOUT].groupby(["budget", "k"], sort=True):
        complete = same[(same[[column for column, _ in ADDITIONS]] > 0).all(axis=1)]
        if len(same) < 2 or len(complete) != 1:
            continue
        full = complete.iloc[0]
        for _, g in same.iterrows():
            left_out = [name for column, name in ADDITIONS if not g[column] > 0]
            covered = idx is not None and all(r in errors for r in (*g["run_ids"], *full["run_ids"]))
            p = (bootstrap.probability_better([errors[r] for r in full["run_ids"]], [errors[r] for r in g["run_ids"]], idx)
                 if covered and left_out else np.nan)
            rows.append({"budget": budget, "k": k, "left_out": ", ".join(left_out) or "nothing (every addition)",
                         "order": len(left_out), "reduction": g["reduction_mean"], "wer": g["test_wer_mean"],
                         "low": g["test_wer_ci_low"], "high": g["test_wer_ci_high"],
                         "over_full": g["test_wer_mean"] - full["test_wer_mean"] if left_out else np.nan,
                         "p_full": p, "seeds": str(g["n"])})
    if not rows:
        raise Skipped("no controller-from-dense setting with every addition (adl.distill, adl.distill_hidden and "
                      "adl.finetune_epochs above 0) beside one without, at the same budget and k")
    table = pd.DataFrame(rows).sort_values(["budget", "k", "order", "left_out"], kind="stable").reset_index(drop=True)
    pct = fixed_digits(2, 100)
    columns = [*_setting_columns(Column("left_out", "Left out", "left_out", as_text)),
               Column("over_every_addition_pct", "Over every addition (points)", "over_full", pct),
               Column("p_every_addition_better", "P(every addition better)", "p_full", fixed_digits(3)),
               Column("seeds", "Seeds", "seeds", as_text)]
    return Table(columns, table)


def extra_epochs_figure(frame: pd.DataFrame, errors: UtteranceErrors | None) -> Figure:
    """Test WER against k, one panel per budget, one line per method and teacher weight (seed means with
    their bootstrap intervals); dense as a dashed line."""
    groups = with_intervals(settings(frame), errors)
    budgets = sorted(groups["budget"].unique())
    fig, axes = new_figure(ncols=len(budgets), width=4.2 * len(budgets) + 1.0, height=5.6)
    recipe = int(groups["epochs"].min())
    wer = frame.set_index("run_id")["test_wer"].astype(float)
    dense = wer[dense_runs(frame, recipe)]
    longer = sorted((k, wer[ids]) for k in groups["k"].unique() if (ids := dense_runs(frame, recipe + k)))
    line_keys = ["kind", "distill", "distill_hidden", "fixed", "pools"]  # one line per method, teacher and schedule
    groups["fixed"] = groups.apply(_fixed_at_the_end, axis=1)
    groups["pools"] = groups["ranking"].map(lambda r: r if isinstance(r, str) else "none")  # NA never compares equal
    lines = groups[line_keys].drop_duplicates().sort_values(line_keys)
    for ax, budget in zip(axes, budgets):
        for n, line in enumerate(lines.itertuples(index=False)):
            rows = groups[(groups["budget"] == budget) & (groups[line_keys] == list(line)).all(axis=1)]
            if rows.empty:
                continue
            rows = rows.sort_values("k")
            colour, marker, _ = method_look(line.kind)
            y = 100 * rows["test_wer_mean"].to_numpy(dtype=float)
            bars = np.abs(100 * rows[["test_wer_ci_low", "test_wer_ci_high"]].to_numpy(dtype=float).T - y)
            ax.errorbar(rows["k"] + 0.08 * (n - (len(lines) - 1) / 2), y, yerr=np.nan_to_num(bars), color=colour,
                        marker=marker, linestyle="--" if line.distill or line.distill_hidden else "-", capsize=3,
                        label=_name(rows.iloc[0]))
        if len(dense):
            ax.axhline(100 * dense.mean(), color="black", linestyle=":", linewidth=1.2,
                       label=f"dense ({len(dense)} seed{'s' * (len(dense) != 1)})")
        if longer:  # the control: dense trained for the same total epochs
            ax.plot([k for k, _ in longer], [100 * w.mean() for _, w in longer], color="black", marker="s",
                    linestyle="-", linewidth=1.0, label=f"dense + k ({len(longer[0][1])} seed{'s' * (len(longer[0][1]) != 1)})")
        ax.set_xticks(sorted(groups["k"].unique()))
        ax.set_xlabel("k: epochs after the dense recipe's")
        ax.set_title(f"{budget:.0%} fewer parameters asked")
    axes[0].set_ylabel("test WER (%)")
    handles = {}
    for ax in axes:  # every line once, whichever panel has it
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=2)
    fig.suptitle(f"{', '.join(sorted(frame['experiment'].unique()))}: pruning the trained model with k more epochs\n"
                 "(seed means; bars: 95% bootstrap CI)")
    return fig
