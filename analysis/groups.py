"""Repeated seeds: trials that differ only in their seed form one setting, summarised by mean and spread."""
from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from analysis.runs import sort_rows

# Everything that identifies a setting: the trials of one setting differ only in their seed.
SETTING_KEYS = ("experiment", "method", "locations", "budget_params", "target_reduction", "tau", "alpha", "setting")
VALUES = ("params", "reduction", "dev_wer", "test_wer", "flops", "latency_ms")


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
