"""The figures, drawn from the tidy trial table (analysis.runs) and, for the adaptive-dropout ones,
the retention probabilities and kept-fraction histories (analysis.artifacts).

Each function returns a finished Figure, or raises Skipped saying which data is missing. Error rates
and reductions are drawn in percent; repeated seeds as their mean with a bar of one standard deviation.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib import transforms
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from analysis.plotting import CONTROLLER, SERIES_COLOURS, VARIANT_LOOKS, method_look, new_figure, si_scale
from analysis.runs import VALUES, locations_rank, seed_groups
from analysis.tables import UtteranceErrors, front, with_intervals
from study.names import ADAPTIVE_DROPOUT, LOCATIONS, REPORT_ORDER

ADL = ADAPTIVE_DROPOUT
MAX_SERIES = 6  # more lines than this on one panel cannot be told apart
DODGE_POINTS = 5.0  # sideways distance between two methods' markers at one budget, in points
PREFIX_WORDS = {"G": "billions", "M": "millions", "k": "thousands", "": "count"}
# name -> (column, metric as logged, what the axis shows)
PARETO_AXES = {
    "params": ("params", "params/total", "parameters"),
    "flops": ("flops", "flops/encoder_10s", "encoder FLOPs"),
    "latency": ("latency_ms", "latency/ms_b1_10s", "latency"),
}
# Labelled WER ticks per decade, by how many times the axis's bottom its top is: fewer the wider it spans.
LOG_TICKS = ((30, (1.0, 2.0, 5.0)), (3, (1.0, 1.5, 2.0, 3.0, 5.0, 7.0)),
             (0, (1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0)))
HYPERPARAMETERS = {"tau": "temperature τ (adl.tau)", "alpha": "penalty weight α (adl.alpha)"}


class Skipped(Exception):
    """A figure whose data is absent; the message says what is missing."""


@dataclass
class Series:
    """One setting, or one method's settings, drawn as one line: its trials pooled over seeds."""
    label: str
    colour: str
    run_ids: list[str]
    marker: str = "o"


def _experiment(frame: pd.DataFrame) -> str:
    return ", ".join(sorted(frame["experiment"].unique()))


def _methods(kinds: pd.Series) -> list[str]:
    """The methods present, in the report's order; the budget controller right after the regulariser."""
    order, present = (*REPORT_ORDER, CONTROLLER), set(kinds)
    return [m for m in order if m in present] + sorted(present - set(order))


def _std(values: pd.Series) -> np.ndarray:
    """Error bar lengths: the std over seeds, zero for a setting run once."""
    return values.fillna(0.0).to_numpy(dtype=float)


def _dense_line(ax, frame: pd.DataFrame) -> Line2D | None:
    """The dense baseline's mean test WER as a dashed line across the panel (None without dense runs)."""
    dense = frame.loc[frame["method"] == "dense", "test_wer"]
    if dense.empty:
        return None
    return ax.axhline(100 * dense.mean(), color="black", linestyle="--", linewidth=1.2,
                   label=f"dense baseline: {100 * dense.mean():.1f}% (mean of {len(dense)})")


def _pareto_axis_label(axis: str, prefix: str) -> str:
    if axis == "params":
        return f"parameters ({PREFIX_WORDS[prefix]})"
    if axis == "flops":
        return f"encoder {prefix}FLOPs per 10 s of audio"
    return "latency per 10 s utterance, batch of 1 (ms)"


def _wer_bars(means: pd.DataFrame) -> np.ndarray:
    """Vertical error bars (percentage points): the 95% bootstrap interval over test utterances where
    every run of the setting logged its per-utterance errors, else the std over seeds."""
    mean = means["test_wer_mean"].to_numpy(dtype=float)
    low, high = means["test_wer_ci_low"].to_numpy(dtype=float), means["test_wer_ci_high"].to_numpy(dtype=float)
    std = _std(means["test_wer_std"])
    has_ci = ~np.isnan(low)
    return 100 * np.vstack([np.where(has_ci, mean - low, std), np.where(has_ci, high - mean, std)])


def _kinds(groups: pd.DataFrame) -> pd.Series:
    """The method each setting is drawn as: adaptive dropout with a target is the budget controller."""
    return groups["method"].mask(groups["adl_target_reduction"] > 0, CONTROLLER)


def _asked(groups: pd.DataFrame) -> pd.Series:
    """The parameter reduction each setting asked for: a baseline's target (or its budget against the
    dense size), the controller's target; NaN for dense and the regulariser, which cannot aim at a size."""
    from_budget = 1 - groups["budget_params"].astype(float) / groups["dense_params_mean"]
    asked = groups["target_reduction"].fillna(from_budget).fillna(groups["adl_target_reduction"])
    return asked.round(3)  # 0.3 asked by two methods is one target, whatever the float noise


def pareto_series(groups: pd.DataFrame) -> list[Series]:
    """The lines of a Pareto plot: one per method (the budget controller apart from the paper's
    regulariser) and per variant of a method (settings that differ within it), each with its own look.
    α and the target stay within a line: they are the knobs that trade size for error."""
    kinds, spare = _kinds(groups), itertools.cycle(VARIANT_LOOKS)
    series = []
    for kind in _methods(kinds):
        rows = groups[kinds == kind]
        colour, marker, name = method_look(kind)
        variants = pd.Series(_labels(rows, omit=("alpha", "target"), keep=()), index=rows.index)
        for i, variant in enumerate(dict.fromkeys(variants)):
            if i:
                colour, marker = next(spare)
            run_ids = [r for ids in rows.loc[variants == variant, "run_ids"] for r in ids]
            # the variant on a line of its own keeps the legend narrow beside the plot
            series.append(Series(f"{name}:\n  {variant}" if variant else name, colour, run_ids, marker))
    return series


def _log_wer_axis(ax) -> None:
    # Log, not linear: collapsed models near 100% would squash the 5-20% band where the methods compete.
    ax.set_yscale("log")
    low, high = ax.get_ylim()
    subs = next(subs for ratio, subs in LOG_TICKS if high / low > ratio)
    ax.yaxis.set_major_locator(LogLocator(subs=subs))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}%"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_ylabel("test WER (log scale)")


def _target_lines(ax, groups: pd.DataFrame, factor: float) -> Line2D | None:
    """Each asked-for reduction as a dotted line at that many parameters, named on a top axis: one
    mark per budget however many methods aimed at it; a point's gap to its line is its miss."""
    targets = sorted(set(_asked(groups).dropna()))
    if not targets:
        return None
    xs = [groups["dense_params_mean"].median() * (1 - t) / factor for t in targets]
    for x in xs:
        ax.axvline(x, color="gray", linestyle=":", linewidth=1.2, zorder=0)
    top = ax.secondary_xaxis("top")
    top.set_xticks(xs, [f"{t:.0%}" for t in targets])
    top.set_xlabel("target reduction", fontsize=10)
    return Line2D([], [], color="gray", linestyle=":", label="target reduction (top axis)")


def _target_labels(ax, groups: pd.DataFrame, series: list[Series], x: str, factor: float) -> Line2D | None:
    """Each mean's asked-for reduction written beside it, in its line's colour: on a FLOPs or latency
    axis a parameter target has no position of its own."""
    for s in series:
        means = _members(groups, s)
        for xi, y, t in zip(means[x] / factor, 100 * means["test_wer_mean"], _asked(means)):
            if not np.isnan(t):
                ax.annotate(f"{t:.0%}", (xi, y), xytext=(4, 3), textcoords="offset points", fontsize=7.5,
                            color=s.colour)
    if _asked(groups).isna().all():
        return None
    return Line2D([], [], color="gray", marker=r"$30\%$", markersize=15, linestyle="", label="target reduction")


def _members(groups: pd.DataFrame, s: Series) -> pd.DataFrame:
    """The settings (rows of seed_groups) a series pools."""
    return groups[groups["run_ids"].map(set(s.run_ids).issuperset)]


def pareto(frame: pd.DataFrame, axis: str, errors: UtteranceErrors | None = None) -> Figure:
    """Test WER (log scale) against size (parameters, encoder FLOPs or latency): every trial a faint
    point, each setting's mean over seeds a marker with error bars (the bootstrap interval when the
    runs logged per-utterance errors), and each method's Pareto front through those means a step
    line; the dense baseline a dashed horizontal line, the reductions asked for marked."""
    column, metric, what = PARETO_AXES[axis]
    data = frame[frame[column].notna()]
    if data.empty:
        raise Skipped(f"no finished trial logged {metric}")
    groups = with_intervals(seed_groups(data, values=(*VALUES, "dense_params")), errors)
    factor, prefix = (1.0, "") if axis == "latency" else si_scale(float(data[column].max()))
    fig, (ax,) = new_figure(width=10.5, height=5.6)
    series = pareto_series(groups)
    for i, s in enumerate(series):
        trials, means = data[data["run_id"].isin(s.run_ids)], _members(groups, s)
        # Methods share the budgets' x positions: each series' markers are drawn a few points aside
        # (DODGE_POINTS apart), so a close pair stays two markers; its front is drawn where it is.
        aside = 0.0 if s.label == "dense" else DODGE_POINTS * (i - (len(series) - 1) / 2)  # dense stands alone
        dodged = transforms.offset_copy(ax.transData, fig=fig, x=aside, units="points")
        ax.scatter(trials[column].astype(float) / factor, 100 * trials["test_wer"], s=16, marker=s.marker,
                   color=s.colour, alpha=0.3, linewidths=0, transform=dodged)
        x, y = means[f"{column}_mean"] / factor, 100 * means["test_wer_mean"]
        bars = _wer_bars(means)
        ax.errorbar(x, y, xerr=_std(means[f"{column}_std"]) / factor, yerr=bars, fmt=s.marker,
                    color=s.colour, markersize=7, capsize=3, linewidth=1, transform=dodged,
                    label=f"{s.label} ({len(trials)} trial{'s' * (len(trials) != 1)})")
        # the view must still hold every point and bar: artists drawn aside do not count towards it
        ax.update_datalim(np.column_stack([np.tile(x.to_numpy(dtype=float), 2),
                                           np.concatenate([y - np.nan_to_num(bars[0]), y + np.nan_to_num(bars[1])])]))
        ax.update_datalim(np.column_stack([trials[column].to_numpy(dtype=float) / factor,
                                           100 * trials["test_wer"].to_numpy(dtype=float)]))
        fx, fy = front(x, y)
        if len(fx) > 1:
            ax.step(fx, fy, where="post", color=s.colour, linewidth=1.5, alpha=0.8)
    ax.autoscale_view()
    _dense_line(ax, data)
    _log_wer_axis(ax)
    targets = (_target_lines(ax, groups, factor) if axis == "params"
               else _target_labels(ax, groups, series, f"{column}_mean", factor))
    ax.set_xlabel(_pareto_axis_label(axis, prefix))
    ax.set_title(f"{_experiment(data)}: test WER against {what}\n(lower left is better)")
    handles, _ = ax.get_legend_handles_labels()
    handles += [Line2D([], [], color="gray", marker="o", linestyle="", alpha=0.4,
                       label=f"one trial (seed); markers {DODGE_POINTS:g} pt apart per method"),
                Line2D([], [], color="gray", marker="o", linestyle="",
                       label="mean over seeds; bars: 95% bootstrap CI" if errors else "mean ± std over seeds"),
                Line2D([], [], color="gray", linewidth=1.5, label="Pareto front of a method"),
                *([targets] if targets else [])]
    fig.legend(handles=handles, loc="outside right upper")
    return fig


def _words(row: pd.Series) -> dict[str, str]:
    """A setting in words, keyed by what each says: where adaptive dropout sits, τ, α or the
    controller's target, then the other settings ("k=v" items of `setting`)."""
    words = {}
    if row["method"] == ADL:
        words |= {"locations": str(row["locations"]), "tau": f"τ={row['tau']:g}"}
    if not pd.isna(row["alpha"]):
        words["alpha"] = f"α={row['alpha']:g}"
    if not pd.isna(row["adl_target_reduction"]):
        words["target"] = f"target {row['adl_target_reduction']:.0%}"
    for item in re.split(r", (?=[\w.]+=)", str(row["setting"])) if row["setting"] else []:  # a value may hold ", "
        if not item.startswith("adl.target_reduction="):  # said as "target 30%", or by α
            words[item.split("=", 1)[0]] = item
    return words


def _labels(settings: pd.DataFrame, omit: tuple[str, ...] = (), keep: tuple[str, ...] = ("locations",)) -> list[str]:
    """Short names for settings: their words (`_words`) that differ between them, and `keep` always,
    less `omit` (what the x axis or the line already says)."""
    words = [_words(row) for _, row in settings.iterrows()]
    keys = dict.fromkeys(["locations", "tau", "alpha", "target", *(k for w in words for k in w)])
    shown = [k for k in keys if k not in omit and (k in keep or len({w.get(k) for w in words}) > 1)]
    return [", ".join(w[k] for k in shown if k in w) for w in words]


def _fixed_setting(adl: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The trials at the (τ, α, other) setting shared by the most location subsets, so that the
    subsets are compared with everything else equal; and that setting, in words."""
    key = adl["tau"].map("{:g}".format) + "|" + adl["alpha"].map("{:g}".format) + "|" + adl["setting"]
    reach = adl.groupby(key, sort=True).agg(subsets=("locations", "nunique"), trials=("run_id", "size"))
    best = reach.sort_values(["subsets", "trials"], ascending=False, kind="mergesort").index[0]
    tau, alpha, setting = best.split("|", 2)
    return adl[key == best], f"τ = {tau}, α = {alpha}" + (f", {setting}" if setting else "")


def _bars(ax, groups: pd.DataFrame, trials: pd.DataFrame, value: str, colour: str) -> None:
    """A bar per location subset (mean; error bar: the bootstrap interval of test WER, else the std) with
    every trial as a dot on it."""
    x = np.arange(len(groups))
    means = 100 * groups[f"{value}_mean"].to_numpy(dtype=float)
    errors = _wer_bars(groups) if value == "test_wer" else 100 * _std(groups[f"{value}_std"])
    ax.bar(x, means, yerr=errors, color=colour, alpha=0.55, capsize=4, width=0.6)
    for i, subset in enumerate(groups["locations"]):
        points = 100 * trials.loc[trials["locations"] == subset, value].to_numpy(dtype=float)
        ax.scatter(i + np.linspace(-0.12, 0.12, len(points)) * (len(points) > 1), points, color="black", s=14, zorder=3)
        top = max(means[i] + np.nan_to_num(np.atleast_2d(errors)[-1][i]), points.max(initial=means[i]))
        ax.annotate(f"{means[i]:.1f}", (i, top), xytext=(0, 4), textcoords="offset points", ha="center",
                    va="bottom", fontsize=9)
    ax.set_ylim(top=ax.get_ylim()[1] * 1.08)  # room for the value labels
    ax.set_xticks(x, [f"{s.replace('+', '+' + chr(10))}\n(n={n})" for s, n in zip(groups["locations"], groups["n"])])
    ax.set_xlabel("locations with adaptive dropout")


def location_ablation(frame: pd.DataFrame, errors: UtteranceErrors | None = None) -> Figure:
    """Test WER and parameter reduction for each subset of {ffn, mhsa, conv} given adaptive dropout."""
    adl = frame[frame["method"] == ADL]
    if adl.empty:
        raise Skipped("no finished adaptive_dropout trials")
    trials, fixed = _fixed_setting(adl)
    groups = with_intervals(seed_groups(trials, keys=("locations",)), errors)
    groups = groups.iloc[np.argsort(locations_rank(groups["locations"]).to_numpy(), kind="stable")]
    if len(groups) < 2:
        raise Skipped(f"only one location subset ({groups['locations'].iloc[0]}) at {fixed}")
    fig, (wer_ax, red_ax) = new_figure(ncols=2, width=11.0, height=4.8)
    _bars(wer_ax, groups, trials, "test_wer", "tab:blue")
    if (dense := _dense_line(wer_ax, frame)) is not None:
        wer_ax.legend(handles=[dense], loc="upper right")
        wer_ax.set_ylim(top=wer_ax.get_ylim()[1] * 1.12)  # the legend above the value labels
    wer_ax.set_ylabel("test WER (%)")
    wer_ax.set_title("error rate (lower is better)")
    _bars(red_ax, groups, trials, "reduction", "tab:green")
    red_ax.set_ylabel("parameter reduction vs dense (%)")
    red_ax.set_title("size (higher is a smaller model)")
    bars = "WER: 95% bootstrap CI, reduction: ± std" if errors else "mean ± std"
    fig.suptitle(f"{_experiment(frame)}: where adaptive dropout is applied ({fixed})\nbars: {bars}; dots: trials")
    return fig


def hyperparameter_effect(frame: pd.DataFrame, name: str, errors: UtteranceErrors | None = None) -> Figure:
    """Test WER and reduction against adl.tau or adl.alpha: one line per combination of the other
    settings (location subset, the other hyperparameter) under which it was varied."""
    adl = frame[frame["method"] == ADL]
    if adl.empty:
        raise Skipped("no finished adaptive_dropout trials")
    values = np.unique(adl[name].dropna().to_numpy(dtype=float))  # the budget controller has no α
    if len(values) < 2:
        raise Skipped(f"adl.{name} is {values[0]:g} in every adaptive_dropout trial that has one" if len(values)
                      else f"no adaptive_dropout trial has an adl.{name} (budget controller trials only)")
    groups = with_intervals(seed_groups(adl), errors)
    others = [k for k in ("locations", "tau", "alpha", "setting") if k != name]
    lines = [g.sort_values(name) for _, g in groups.groupby(others, dropna=False, sort=False) if g[name].nunique() > 1]
    if not lines:
        raise Skipped(f"adl.{name} was never varied with the other settings held fixed")
    labels = _labels(pd.DataFrame([g.iloc[0] for g in lines]), omit=(name,))
    fig, (wer_ax, red_ax) = new_figure(ncols=2, width=11.0, height=4.6)
    for i, (g, label) in enumerate(zip(lines, labels)):
        colour = SERIES_COLOURS[i % len(SERIES_COLOURS)]
        for ax, value in ((wer_ax, "test_wer"), (red_ax, "reduction")):
            bars = _wer_bars(g) if value == "test_wer" else 100 * _std(g[f"{value}_std"])
            ax.errorbar(g[name], 100 * g[f"{value}_mean"], yerr=bars, marker="o", color=colour, capsize=3, label=label)
    handles, names = wer_ax.get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncols=min(3, len(names)), title="adaptive dropout at")
    if (dense := _dense_line(wer_ax, frame)) is not None:
        wer_ax.legend(handles=[dense], loc="best")
    for ax, ylabel in ((wer_ax, "test WER (%)"), (red_ax, "parameter reduction vs dense (%)")):
        if values.min() > 0 and values.max() / values.min() >= 10:
            ax.set_xscale("log")
        if len(values) <= 8:  # ticks at the values tried, written as in the experiment file
            ax.set_xticks(values, [f"{v:g}" for v in values])
            ax.set_xticks([], minor=True)
        ax.set_xlabel(HYPERPARAMETERS[name] + (", log scale" if ax.get_xscale() == "log" else ""))
        ax.set_ylabel(ylabel)
    wer_ax.set_title("error rate (lower is better)")
    red_ax.set_title("size (higher is a smaller model)")
    bars = "test WER: 95% bootstrap CI, reduction: ± std" if errors else "mean ± std over seeds"
    fig.suptitle(f"{_experiment(frame)}: effect of the {HYPERPARAMETERS[name].split(' (')[0]} ({bars})")
    return fig


def adl_series(frame: pd.DataFrame) -> tuple[list[Series], str]:
    """The adaptive-dropout settings to draw, with fixed colours; at most MAX_SERIES, those with the
    lowest test WER, and a note saying so when some were left out."""
    adl = frame[frame["method"] == ADL]
    groups = seed_groups(adl)
    labels = _labels(groups)
    chosen = sorted(np.argsort(groups["test_wer_mean"].to_numpy(), kind="stable")[:MAX_SERIES])
    series = []
    for i in chosen:
        row = groups.iloc[i]
        series.append(Series(labels[i], SERIES_COLOURS[len(series)], list(row["run_ids"])))
    note = f"; the {MAX_SERIES} of {len(groups)} settings with the lowest test WER" if len(groups) > MAX_SERIES else ""
    return series, note


def _location_panels(present: set[str]) -> list[str]:
    return [loc for loc in LOCATIONS if loc in present]


def _series_legend(fig: Figure, axes: list, series: list[Series]) -> None:
    """One legend for all panels: the settings in their fixed order, then any reference lines."""
    handles = {label: h for ax in axes for h, label in zip(*ax.get_legend_handles_labels())}
    order = [s.label for s in series if s.label in handles] + [k for k in handles if k not in {s.label for s in series}]
    # Below the panels: setting names can be long, and a legend at the side would run into the title.
    fig.legend([handles[k] for k in order], order, loc="outside lower center", ncols=min(2, len(order)),
               title="adaptive dropout at")


def retention_histograms(frame: pd.DataFrame, retention: dict[str, dict[str, np.ndarray]]) -> Figure:
    """The final retention probabilities of each location's units, one panel per location, one
    outline per adaptive-dropout setting (seeds pooled); the pruning threshold dashed."""
    series, note = adl_series(frame[frame["run_id"].isin(list(retention))])
    if not series:
        raise Skipped("no finished adaptive_dropout trial has a retention.json artifact")
    locations = _location_panels({loc for probs in retention.values() for loc in probs})
    fig, axes = new_figure(ncols=len(locations), width=max(6.5, 4.6 * len(locations)), height=4.9)
    thresholds = frame.loc[frame["method"] == ADL, "threshold"].dropna().unique()
    for ax, loc in zip(axes, locations):
        for s in series:
            pooled = [retention[r][loc] for r in s.run_ids if loc in retention.get(r, {})]
            if not pooled:
                continue
            p = np.concatenate(pooled)
            counts, edges = np.histogram(p, bins=20, range=(0.0, 1.0))
            ax.stairs(100 * counts / len(p), edges, color=s.colour, linewidth=1.6, label=s.label)
        for t in thresholds:
            ax.axvline(t, color="black", linestyle="--", linewidth=1, label=f"pruning threshold {t:g}")
        ax.set_xlim(0, 1)
        ax.set_xlabel("final retention p\n(or a hard concrete gate's evaluation value)")  # two lines: fits a panel
        ax.set_ylabel("units (% of the location's units)")
        ax.set_title(loc)
    _series_legend(fig, axes, series)
    fig.suptitle(f"{_experiment(frame)}: retention probabilities per location "
                 f"(units right of the threshold are kept{note})")
    return fig


def kept_fraction(frame: pd.DataFrame, history: pd.DataFrame) -> Figure:
    """The fraction of units kept (p above the threshold) after each epoch, one panel per location,
    one line per adaptive-dropout setting (mean over seeds, band = min to max)."""
    series, note = adl_series(frame[frame["run_id"].isin(history["run_id"].unique())])
    if not series or history.empty:
        raise Skipped("no finished adaptive_dropout trial logged adl/kept_fraction/<location>")
    locations = _location_panels(set(history["location"]))
    fig, axes = new_figure(ncols=len(locations), width=max(6.5, 4.6 * len(locations)), height=4.9)
    for ax, loc in zip(axes, locations):
        for s in series:
            h = history[(history["location"] == loc) & history["run_id"].isin(s.run_ids)]
            if h.empty:
                continue
            by_epoch = h.groupby("epoch")["kept_fraction"].agg(["mean", "min", "max"])
            ax.plot(by_epoch.index, 100 * by_epoch["mean"], marker="o", markersize=3.5, color=s.colour, label=s.label)
            if h["run_id"].nunique() > 1:
                ax.fill_between(by_epoch.index, 100 * by_epoch["min"], 100 * by_epoch["max"], color=s.colour,
                                alpha=0.15)
        ax.set_ylim(0, 105)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel("units kept (%)")
        ax.set_title(loc)
    _series_legend(fig, axes, series)
    fig.suptitle(f"{_experiment(frame)}: units kept during training (mean over seeds, band: min to max{note})")
    return fig
