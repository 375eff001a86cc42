"""The ablation's answer one factor at a time (analysis.factors) on the hand-made store, and Optuna's
PED-ANOVA importances of a search sweep's hyperparameters (analysis.importance)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from analysis import factors, importance, load_trials
from analysis.artifacts import load_utterance_errors
from analysis.figures import Skipped
from analysis.runs import tidy
from tests.analysis_store import EXPERIMENT, build_store


# Its module-scoped fixtures are built once only if its tests share one xdist worker
pytestmark = pytest.mark.xdist_group("analysis_factors")


@pytest.fixture(scope="module")
def trials(tmp_path_factory):
    store = build_store(tmp_path_factory.mktemp("factors"))
    frame = load_trials(store.tracking_uri, [EXPERIMENT]).frame
    return frame, load_utterance_errors(MlflowClient(store.tracking_uri), frame["run_id"])


def test_the_centre_is_the_value_each_factor_holds_most_often(trials):
    frame, errors = trials
    rows = factors.factor_rows(frame, errors)
    # the store: locations {all, ffn, mhsa+conv} at tau 0.3 and alpha 0.001; tau 1 and alpha 0.01 at all three
    assert list(zip(rows["factor"], rows["value"])) == [
        ("locations", "ffn+mhsa+conv (centre)"), ("locations", "mhsa+conv"), ("locations", "ffn"),
        ("temperature τ", "0.3 (centre)"), ("temperature τ", "1"),
        ("penalty weight α", "0.001 (centre)"), ("penalty weight α", "0.01")]
    centre = rows.iloc[0]
    assert centre["test"] == pytest.approx(0.245) and centre["n"] == 2 and np.isnan(centre["p_centre"])
    alpha = rows.iloc[-1]
    assert alpha["vs_centre"] == pytest.approx(0.30 - 0.245) and alpha["p_centre"] < 0.05
    assert alpha["n"] == 1 and alpha["verdict"] == "one seed: not claimed"  # resolved, but from one seed
    ffn = rows.iloc[2]
    assert ffn["n"] == 2 and ffn["p_centre"] > 0.95 and ffn["verdict"] == "better"
    for row in rows.itertuples():
        assert row.low <= row.test <= row.high  # the interval of the seed mean holds it


def test_a_full_grid_has_no_centre():
    groups = pd.DataFrame({"locations": ["ffn", "ffn", "mhsa", "mhsa"], "tau": [0.3, 1.0, 0.3, 1.0],
                           "alpha": [0.01] * 4})
    with pytest.raises(Skipped, match="no centre point: locations"):
        factors.centre(groups)


def _search_frame(n: int) -> pd.DataFrame:
    """n search trials: dev WER set by alpha alone, the reduction by tau alone."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        alpha, tau = float(10 ** rng.uniform(-3, -1)), float(rng.uniform(0.1, 1.0))
        rows.append({"experiment": "search", "run_id": f"run{i}", "start_time": 0, "tags.method": "adaptive_dropout",
                     "tags.grid_point": json.dumps({"adl.alpha": alpha, "adl.tau": tau}),
                     "metrics.dev/wer": 0.1 + alpha, "metrics.params/reduction": tau, "metrics.test/wer": 0.1})
    return tidy(pd.DataFrame(rows))


def test_importances_find_what_drives_each_target():
    table = importance.importances(_search_frame(20)).set_index("parameter")
    assert table.loc["adl.alpha", "dev WER"] > 0.8 and table.loc["adl.tau", "parameter reduction"] > 0.8


def test_importances_need_a_search_sweep_of_enough_trials(trials):
    with pytest.raises(Skipped, match="3 finished search trials"):
        importance.importances(_search_frame(3))
    with pytest.raises(Skipped, match="0 finished search trials"):  # a grid sweep's points name their arm
        importance.importances(trials[0])
