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
