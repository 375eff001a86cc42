"""The analysis of pruning a trained model: controller-from-dense settings compared with magnitude pruning
only at the same budget, k and teacher weight; retrainings of one setting's seeds pooled as one setting."""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from analysis import from_dense
from analysis.figures import Skipped
from analysis.plotting import style
from analysis.runs import seed_groups, tidy

DENSE_EPOCHS, UTTERANCES = 18, 50


def _run(rows: list, method: str, seed: int, k: int, distill: float, params: dict, wer: float,
         epochs: int = DENSE_EPOCHS) -> dict:
    run = {"experiment": "prune_trained", "run_id": f"run{len(rows)}", "start_time": 0, "tags.method": method,
           "tags.seed": str(seed), "params.train.epochs": str(epochs), "metrics.test/wer": wer,
           "metrics.train/epochs_total": epochs + k, "metrics.params/total": 1e6 * (1 - 0.5 * (method != "dense")),
           "metrics.params/reduction": 0.5 * (method != "dense"), "tags.mlflow.runName": f"{method}-k{k}-s{seed}",
           **{f"params.{key}": value for key, value in params.items()}}
    rows.append(run)
    return run


def sweep_frame() -> pd.DataFrame:
    """Dense, dense + k (trained 2 and 6 epochs longer), and at 50%: the controller from dense and structured
    magnitude pruning with k in {2, 6}, with and without distillation, 2 seeds each; WER (in %) falls with k,
    and the controller is better."""
    rows = []
    for seed in (0, 1):
        _run(rows, "dense", seed, 0, 0.0, {}, 0.06)
        for k in (2, 6):
            _run(rows, "dense", seed, 0, 0.0, {}, 0.06 - 0.001 * k, epochs=DENSE_EPOCHS + k)
    for seed, k, distill in itertools.product((0, 1), (2, 6), (0.0, 1.0)):
        _run(rows, "adaptive_dropout", seed, k, distill, {"adl.init": "dense", "adl.target_reduction": "0.5",
             "adl.pruning_epochs": str(k), "adl.distill": str(distill)}, 0.10 - 0.005 * k - 0.01 * distill)
        _run(rows, "magnitude_structured", seed, k, distill, {"prune.target_reduction": "0.5",
             "prune.finetune_epochs": str(k), "prune.distill": str(distill)}, 0.14 - 0.005 * k)
    return tidy(pd.DataFrame(rows))


def utterance_errors(frame: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per run: word errors spread over UTTERANCES utterances of 20 words, summing to its WER."""
    words = np.full(UTTERANCES, 20)
    rng = np.random.default_rng(0)
    errors = {}
    for run_id, wer in zip(frame["run_id"], frame["test_wer"]):
        total = round(wer * words.sum())
        errors[run_id] = (np.bincount(rng.integers(0, UTTERANCES, total), minlength=UTTERANCES), words)
    return errors


def test_comparisons_pair_only_equal_budget_k_and_teacher():
    frame = sweep_frame()
    table = from_dense.equal_training_table(frame, utterance_errors(frame)).rows
    assert len(table) == 4  # (k, distill) in {2, 6} x {0, 1}, structured magnitude alone at each
    for row in table.itertuples():
        assert row.baseline == "magnitude, structured" + (", distilled (1)" if row.distill else "")
        assert row.adl_wer == pytest.approx(0.10 - 0.005 * row.k - 0.01 * row.distill, abs=1e-3)
        assert row.baseline_wer == pytest.approx(0.14 - 0.005 * row.k, abs=1e-3)
        assert row.adl_low <= row.adl_wer <= row.adl_high and row.p > 0.95 and row.seeds == "2/2"


def test_every_pruned_setting_is_read_against_dense_and_dense_plus_k():
    frame = sweep_frame()
    table = from_dense.dense_references_table(frame, utterance_errors(frame)).rows
    assert len(table) == 8  # 2 methods x k in {2, 6} x distillation or not
    for row in table.itertuples():
        assert row.dense_wer == pytest.approx(0.06)  # the recipe's dense model, not the longer ones
        assert row.longer_wer == pytest.approx(0.06 - 0.001 * row.k)  # the dense model of the same total epochs
        assert row.over_longer == pytest.approx(row.wer - row.longer_wer)
        assert row.p_dense < 0.5 and row.p_longer < 0.5  # every pruned setting is worse than both here
    without = frame[~((frame["method"] == "dense") & (frame["epochs"] > DENSE_EPOCHS))]
    bare = from_dense.dense_references_table(without, utterance_errors(without)).rows
    assert bare["longer_wer"].isna().all() and bare["dense_wer"].notna().all()  # no dense + k trained: blank


def test_the_figure_has_a_line_per_method_and_teacher():
    frame = sweep_frame()
    with style():
        fig = from_dense.extra_epochs_figure(frame, utterance_errors(frame))
    (ax,) = fig.axes
    labels = set(ax.get_legend_handles_labels()[1])
    assert labels == {"adaptive dropout, budget controller", "adaptive dropout, budget controller, distilled (1)",
                      "magnitude, structured", "magnitude, structured, distilled (1)", "dense (2 seeds)",
                      "dense + k (2 seeds)"}
    dense_line = ax.get_lines()[-1]  # dense + k, at each k
    assert list(dense_line.get_xdata()) == [2, 6] and list(dense_line.get_ydata()) == pytest.approx([5.8, 5.4])
    assert sorted(ax.get_xticks()) == [2, 6]


def test_a_sweep_without_a_from_dense_controller_is_skipped():
    frame = sweep_frame()
    with pytest.raises(Skipped, match="adl.init"):
        from_dense.settings(frame[frame["method"] != "adaptive_dropout"])


def test_retrainings_of_one_settings_seeds_form_one_setting():
    rows = []
    sources = [_run(rows, "adaptive_dropout", seed, 6, 0.0, {"adl.init": "dense", "adl.target_reduction": "0.5"}, 0.08)
               for seed in (0, 1)]
    for source in sources:
        _run(rows, "retrain_pruned", 0, 0, 0.0, {"prune.source_run": source["run_id"]}, 0.09)
    groups = seed_groups(tidy(pd.DataFrame(rows)))
    retrained = groups[groups["method"] == "retrain_pruned"]
    assert len(retrained) == 1 and retrained["n"].iloc[0] == 2
    assert retrained["setting"].iloc[0] == "source adaptive_dropout-k6"  # the source's run name without its seed


def additions_frame() -> pd.DataFrame:
    """Dense and, at 50% with k = 6, the controller with every addition, with each left out in turn and with
    none, 2 seeds each: every addition left out costs its own amount of WER (block outputs the most)."""
    costs = {"distill": 0.01, "distill_hidden": 0.03, "finetune": 0.02}
    variants = {"all": (), "no-kl": ("distill",), "no-blocks": ("distill_hidden",), "no-freeze": ("finetune",),
                "none": tuple(costs)}
    rows = []
    for seed in (0, 1):
        _run(rows, "dense", seed, 0, 0.0, {}, 0.06)
        for left_out in variants.values():
            fixed = 0 if "finetune" in left_out else 3
            params = {"adl.init": "dense", "adl.target_reduction": "0.5", "adl.pruning_epochs": str(6 - fixed),
                      "adl.finetune_epochs": str(fixed), "adl.distill": str(0.0 if "distill" in left_out else 1.0),
                      "adl.distill_hidden": str(0.0 if "distill_hidden" in left_out else 1.0)}
            _run(rows, "adaptive_dropout", seed, 6, 0.0, params, 0.07 + sum(costs[c] for c in left_out))
    return tidy(pd.DataFrame(rows))


def test_each_addition_is_read_against_the_setting_with_every_addition():
    frame = additions_frame()
    table = from_dense.additions_table(frame, utterance_errors(frame)).rows
    assert list(table["left_out"]) == ["nothing (every addition)", "block outputs", "fixed fine-tuning", "output KL",
                                       "output KL, block outputs, fixed fine-tuning"]
    assert table["over_full"].iloc[1:].to_numpy() == pytest.approx([0.03, 0.02, 0.01, 0.06], abs=1e-3)
    assert np.isnan(table["p_full"].iloc[0]) and np.isnan(table["over_full"].iloc[0])  # no comparison with itself
    assert table["p_full"].iloc[4] > 0.95 and (table["seeds"] == "2").all()
    references = from_dense.dense_references_table(frame, utterance_errors(frame)).rows
    assert len(set(references["setting"])) == 5  # the names tell the five settings apart
    with pytest.raises(Skipped, match="every addition"):  # no setting with all three: nothing to read against
        from_dense.additions_table(frame[~frame["run_id"].isin(_runs_named(frame, "all"))], utterance_errors(frame))


def _runs_named(frame: pd.DataFrame, variant: str) -> list[str]:
    """The run ids of the controller setting with every addition (additions_frame's "all")."""
    full = frame[(frame["distill"] > 0) & (frame["distill_hidden"] > 0) & (frame["finetune_epochs"] > 0)]
    assert variant == "all" and len(full) == 2
    return list(full["run_id"])


def test_the_headline_table_leads_with_both_dense_references():
    frame = sweep_frame()
    errors = utterance_errors(frame)
    table = from_dense.headline_table(frame, errors).rows
    assert list(table["setting"].iloc[:3]) == ["dense, 18 epochs", "dense + k, 20 epochs", "dense + k, 24 epochs"]
    assert table["wer"].iloc[:3].to_numpy() == pytest.approx([0.06, 0.058, 0.054])
    pruned = table.iloc[3:].reset_index(drop=True)
    references = from_dense.dense_references_table(frame, errors).rows
    assert pruned["setting"].equals(references["setting"]) and pruned["p_dense"].equals(references["p_dense"])
    for row in table.itertuples():
        low, high = (float(v) for v in row.interval.split("-"))
        assert low <= 100 * row.wer <= high  # the interval printed holds the seed mean


def test_a_baseline_ranked_per_block_is_its_own_setting_and_says_so():
    rows = []
    for seed in (0, 1):
        _run(rows, "dense", seed, 0, 0.0, {}, 0.06)
        _run(rows, "adaptive_dropout", seed, 6, 0.0, {"adl.init": "dense", "adl.target_reduction": "0.5"}, 0.07)
        for ranking in ("global", "uniform"):
            _run(rows, "magnitude_structured", seed, 6, 0.0, {"prune.target_reduction": "0.5", "prune.finetune_epochs": "6",
                 "prune.ranking": ranking}, 0.08 if ranking == "global" else 0.12)
    frame = tidy(pd.DataFrame(rows))
    table = from_dense.equal_training_table(frame, utterance_errors(frame)).rows
    assert list(table["baseline"]) == ["magnitude, structured", "magnitude, structured, ranked per block"]
    assert table["baseline_wer"].to_numpy() == pytest.approx([0.08, 0.12])
    with style():
        fig = from_dense.extra_epochs_figure(frame, utterance_errors(frame))
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert {"magnitude, structured", "magnitude, structured, ranked per block"} <= set(labels)  # a line each
