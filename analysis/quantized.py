"""Pruning composed with int8 (python -m study.quantize): each setting's test WER and batch-1 latency in ONNX
Runtime as exported (float) and with int8 weights, seed means; and a figure of test WER against latency
with an arrow from each setting's float export to its int8 one."""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.figures import Skipped
from analysis.plotting import CONTROLLER, method_look, new_figure
from analysis.runs import SETTING_KEYS, seed_groups
from analysis.tables import SETTING_COLUMNS, Column, Table, fixed_digits

QUANTISED = ("onnx_wer", "int8_wer", "onnx_latency_ms", "int8_latency_ms", "reduction")


def settings(frame: pd.DataFrame) -> pd.DataFrame:
    measured = frame[frame["int8_wer"].notna() & frame["onnx_wer"].notna()]
    if measured.empty:
        raise Skipped("no run measured in int8 (python -m study.quantize EXPERIMENT)")
    return seed_groups(measured, SETTING_KEYS, QUANTISED)


def int8_table(frame: pd.DataFrame) -> Table:
    """Per setting: test WER in float and int8 and their difference; latency in both and their ratio."""
    groups = settings(frame)
    groups["wer_cost"] = groups["int8_wer_mean"] - groups["onnx_wer_mean"]
    groups["speedup"] = groups["onnx_latency_ms_mean"] / groups["int8_latency_ms_mean"]
    pct, ms = fixed_digits(2, 100), fixed_digits(1)
    columns = SETTING_COLUMNS + [
        Column("reduction_pct", "Reduction (%)", "reduction_mean", fixed_digits(1, 100)),
        Column("float_test_wer_pct", "Test WER, float (%)", "onnx_wer_mean", pct),
        Column("int8_test_wer_pct", "Test WER, int8 (%)", "int8_wer_mean", pct),
        Column("int8_cost_points", "int8 cost (points)", "wer_cost", pct),
        Column("float_latency_ms", "Latency, float (ms)", "onnx_latency_ms_mean", ms),
        Column("int8_latency_ms", "Latency, int8 (ms)", "int8_latency_ms_mean", ms),
        Column("int8_speedup", "int8 speed-up", "speedup", fixed_digits(2)),
        Column("n_runs", "n", "n", fixed_digits(0)),
    ]
    return Table(columns, groups)


def int8_figure(frame: pd.DataFrame) -> Figure:
    groups = settings(frame)
    kinds = groups["method"].mask(groups["adl_target_reduction"] > 0, CONTROLLER)  # the controller drawn apart
    fig, (ax,) = new_figure(width=9.5, height=5.4)
    seen = set()
    for (_, row), kind in zip(groups.iterrows(), kinds):
        colour, marker, label = method_look(kind)
        x = [row["onnx_latency_ms_mean"], row["int8_latency_ms_mean"]]
        y = [100 * row["onnx_wer_mean"], 100 * row["int8_wer_mean"]]
        ax.plot(x[:1], y[:1], marker=marker, color=colour, linestyle="", markersize=7,
                label=label if kind not in seen else None)
        ax.plot(x[1:], y[1:], marker=marker, color=colour, linestyle="", markersize=7, markerfacecolor="none")
        ax.annotate("", xy=(x[1], y[1]), xytext=(x[0], y[0]),
                    arrowprops={"arrowstyle": "->", "color": colour, "alpha": 0.6})
        seen.add(kind)
    ax.update_datalim(np.column_stack([groups[["onnx_latency_ms_mean", "int8_latency_ms_mean"]].to_numpy(float).ravel(),
                                       100 * groups[["onnx_wer_mean", "int8_wer_mean"]].to_numpy(float).ravel()]))
    ax.autoscale_view()
    ax.set_xlabel("ONNX Runtime latency per 10 s utterance, batch of 1 (ms)")
    ax.set_ylabel("test WER (%)")
    ax.plot([], [], marker="o", color="gray", linestyle="", label="float export (filled)")
    ax.plot([], [], marker="o", color="gray", linestyle="", markerfacecolor="none", label="int8 weights (hollow)")
    fig.legend(loc="outside right upper")
    ax.set_title(f"{', '.join(sorted(frame['experiment'].unique()))}: pruning composed with int8\n"
                 "(seed means; an arrow from each setting's float export to its int8 one)")
    return fig
