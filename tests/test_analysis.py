"""The analysis package on a small hand-made MLflow store: loading, Pareto fronts, figures, tables, CLI."""
from __future__ import annotations

import itertools
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection
from mlflow.tracking import MlflowClient

from analysis import (
    ExperimentNotFound,
    NoFinishedRuns,
    figures,
    load_trials,
    regenerate,
)
from analysis.__main__ import main
from analysis.artifacts import load_retention
from analysis.plotting import new_figure, save, style
from analysis.runs import COLUMNS, experiments_with_trials, seed_groups, tidy
from analysis.tables import front, pareto_mask
from tests.analysis_store import (
    BROKEN,
    BUDGET,
    EXPERIMENT,
    FINISHED,
    SOURCE_DENSE,
    Store,
    build_store,
)

REPO = Path(__file__).resolve().parents[1]

FIGURES = ("pareto_params", "pareto_flops", "pareto_latency", "location_ablation", "effect_tau", "effect_alpha",
           "retention_histograms", "kept_fraction")
TABLES = ("ablation_table", "pareto_runs", "comparisons", "factors", "provenance")  # ADL runs vary one factor at a time


# experiments/pareto.toml's sweep with README.md's results ("The Pareto sweep"): per arm, its parameters beyond
# DEFAULTS and, per grid value, (value, test WER, reduction reached); the magnitude arm also without fine-tuning.
DENSE_SIZE = 1_100_000
DEFAULTS = {"adl.alpha": "0.01", "adl.tau": "1.0", "adl.gate": "gumbel_sigmoid", "adl.polarise": "0.0",
            "adl.target_reduction": "0.0", "adl.locations": "['ffn', 'mhsa', 'conv']", "prune.target_reduction": "0.0",
            "prune.finetune_epochs": "0"}
TARGET = "prune.target_reduction"
ARMS = [
    ("dense", {}, None, [(None, 0.0592, 0.0)]),
    ("adaptive_dropout", {}, "adl.alpha", [("0.005", 0.0838, 0.396), ("0.02", 0.3847, 0.652), ("0.08", 0.5294, 0.713)]),
    ("adaptive_dropout", {"adl.gate": "hard_concrete", "adl.tau": "0.6667", "adl.polarise": "0.5"},
     "adl.target_reduction", [("0.3", 0.0715, 0.3), ("0.5", 0.0815, 0.5), ("0.7", 0.1369, 0.7)]),
    ("small_dense", {}, TARGET, [("0.3", 0.0797, 0.3), ("0.5", 0.0951, 0.5), ("0.7", 0.1821, 0.7)]),
    ("magnitude_unstructured", {}, TARGET, [("0.3", 0.0637, 0.3), ("0.5", 0.0903, 0.5), ("0.7", 0.6431, 0.7)]),
    ("magnitude_structured", {"prune.finetune_epochs": "2"}, TARGET,
     [("0.3", 0.0893, 0.3), ("0.5", 0.1304, 0.5), ("0.7", 0.3830, 0.7)]),
    ("magnitude_structured", {"prune.finetune_epochs": "0"}, TARGET,
     [("0.3", 0.39, 0.3), ("0.5", 0.88, 0.5), ("0.7", 0.99, 0.7)]),
]


def pareto_sweep_frame() -> pd.DataFrame:
    """ARMS, two seeds, as load_trials reads them: search_runs' columns through runs.tidy."""
    rows = []
    for method, fixed, knob, points in ARMS:
        shrinks = method != "magnitude_unstructured"  # zeros in dense matrices: no fewer FLOPs, no speed-up
        for (value, wer, reduction), seed in itertools.product(points, (0, 1)):
            params = DEFAULTS | fixed | ({knob: value} if knob else {})
            rows.append({"experiment": "pareto", "run_id": f"run{len(rows)}", "start_time": 0, "tags.method": method,
                         "tags.seed": str(seed), **{f"params.{k}": v for k, v in params.items()},
                         "metrics.test/wer": wer * (1 + 0.04 * seed), "metrics.params/dense_total": DENSE_SIZE,
                         "metrics.params/total": DENSE_SIZE * (1 - reduction), "metrics.params/reduction": reduction,
                         "metrics.flops/encoder_10s": 2e9 * (1 - 0.9 * reduction * shrinks),
                         "metrics.latency/ms_b1_10s": 20 * (1 - 0.5 * reduction * shrinks)})
    return tidy(pd.DataFrame(rows))


# Its module-scoped fixtures are built once only if its tests share one xdist worker
pytestmark = pytest.mark.xdist_group("analysis")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    return build_store(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def written(store: Store, tmp_path_factory) -> list[Path]:
    """One regeneration, shared by the tests that look at its output (drawing is the slow part)."""
    return regenerate(EXPERIMENT, store.tracking_uri, tmp_path_factory.mktemp("figures"))


# --- Pareto front on hand-made points ---

def test_pareto_mask_excludes_dominated_points():
    x = [1.0, 2.0, 3.0, 2.5, 4.0]
    y = [5.0, 3.0, 1.0, 3.5, 1.0]  # (2.5, 3.5) is beaten by (2, 3); (4, 1) by (3, 1)
    assert pareto_mask(x, y).tolist() == [True, True, True, False, False]


def test_pareto_mask_ties():
    # identical points are both kept; equal x with larger y, or equal y with larger x, is dominated
    x = [1.0, 1.0, 1.0, 2.0, 3.0]
    y = [2.0, 2.0, 3.0, 1.0, 1.0]
    assert pareto_mask(x, y).tolist() == [True, True, False, True, False]


def test_pareto_mask_nan_empty_and_single():
    assert pareto_mask([1.0, np.nan, 0.5], [1.0, 0.0, np.nan]).tolist() == [True, False, False]
    assert pareto_mask([], []).tolist() == []
    assert pareto_mask([7.0], [7.0]).tolist() == [True]
    with pytest.raises(ValueError):
        pareto_mask([1.0, 2.0], [1.0])


def test_front_is_sorted_by_x():
    fx, fy = front([3.0, 1.0, 2.0, 2.5], [1.0, 3.0, 2.0, 2.5])
    assert fx.tolist() == [1.0, 2.0, 3.0] and fy.tolist() == [3.0, 2.0, 1.0]


# --- loading runs ---

def test_load_trials_rows_columns_and_types(store: Store):
    trials = load_trials(store.tracking_uri, [EXPERIMENT])
    frame = trials.frame
    assert list(frame.columns) == list(COLUMNS)
    assert sorted(frame["run_name"]) == sorted(t.name for t in FINISHED)  # no failed, running or stray run
    assert frame["run_id"].is_unique
    for col in ("experiment", "run_id", "run_name", "method", "locations", "setting"):
        assert isinstance(frame[col].dtype, pd.StringDtype), col
    for col in ("seed", "params", "budget_params"):
        assert frame[col].dtype == "Int64", col
    for col in ("tau", "alpha", "dev_wer", "test_wer", "reduction", "flops", "latency_ms"):
        assert frame[col].dtype == np.float64, col
    assert isinstance(frame["start_time"].dtype, pd.DatetimeTZDtype)

    by_name = frame.set_index("run_name")
    adl = by_name.loc["adl-mhsa+conv-t0.3-a0.001-s0"]
    assert (adl["method"], adl["locations"], adl["tau"], adl["alpha"], adl["seed"]) == (
        "adaptive_dropout", "mhsa+conv", 0.3, 0.001, 0)
    assert adl["params"] == 800_000 and math.isclose(adl["reduction"], 0.2) and math.isclose(adl["test_wer"], 0.23)
    assert by_name.loc["magnitude_structured-s0", "budget_params"] == BUDGET
    assert by_name.loc["magnitude_structured-s0", "locations"] == "none"
    assert math.isnan(by_name.loc["dense-s1", "tau"])  # a dense run has no temperature
    assert (frame["setting"] == "").all()  # the runs differ only in typed columns
    # rows come in table order: dense first, adaptive dropout last
    assert frame["method"].iloc[0] == "dense" and frame["method"].iloc[-1] == "adaptive_dropout"


def test_failed_and_unfinished_runs_are_counted_not_mixed_in(store: Store):
    trials = load_trials(store.tracking_uri, [EXPERIMENT])
    left = trials.excluded.set_index("run_name")
    assert sorted(left.index) == ["adl-conv-t0.3-a0.001-s0", "adl-ffn+conv-t0.3-a0.001-s0"]
    assert left.loc["adl-ffn+conv-t0.3-a0.001-s0", "kind"] == "failed"
    assert left.loc["adl-ffn+conv-t0.3-a0.001-s0", "reason"] == "FloatingPointError: loss is NaN"
    assert left.loc["adl-conv-t0.3-a0.001-s0", "status"] == "RUNNING"
    report = trials.report(EXPERIMENT)
    assert f"{len(FINISHED)} finished trial runs; left out 1 failed, 1 unfinished" in report
    assert "loss is NaN" in report
    assert trials.parents == {EXPERIMENT: store.parent_run_id}


def test_one_sweep_keeps_its_source_dense_run(store: Store):
    trials = load_trials(store.tracking_uri, parent_run_id=store.parent_run_id)
    assert SOURCE_DENSE.name in set(trials.frame["run_name"])  # not a child, but its baselines' reference
    assert len(trials.frame) == len(FINISHED)
    with pytest.raises(ExperimentNotFound):
        load_trials(store.tracking_uri, [BROKEN], parent_run_id=store.parent_run_id)


def test_unknown_experiment_and_experiment_listing(store: Store):
    with pytest.raises(ExperimentNotFound, match="no experiment named 'nope'"):
        load_trials(store.tracking_uri, ["nope"])
    assert experiments_with_trials(store.tracking_uri) == sorted([BROKEN, EXPERIMENT])


def test_seed_groups_mean_and_spread(store: Store):
    groups = seed_groups(load_trials(store.tracking_uri, [EXPERIMENT]).frame)
    both = groups[(groups["locations"] == "ffn+mhsa+conv") & (groups["tau"] == 0.3) & (groups["alpha"] == 0.001)]
    assert len(both) == 1
    row = both.iloc[0]
    assert row["n"] == 2 and row["seeds"] == "0,1"
    assert math.isclose(row["test_wer_mean"], 0.245) and math.isclose(row["test_wer_std"], 0.01 / math.sqrt(2))
    assert row["test_wer_min"] == 0.24 and row["test_wer_max"] == 0.25
    dense = groups[groups["method"] == "dense"].iloc[0]
    assert dense["n"] == 2  # the sweep's dense run and the one outside it share a configuration


# --- figures and tables ---

def test_every_figure_and_table_is_written(written: list[Path]):
    names = {p.name for p in written}
    expected = ({f"{f}.{ext}" for f in FIGURES for ext in ("png", "pdf")}
                | {f"{t}.{ext}" for t in TABLES for ext in ("csv", "md")})
    assert names == expected
    for path in written:
        assert path.parent.name == EXPERIMENT and path.stat().st_size > 0
    png = next(p for p in written if p.suffix == ".png").read_bytes()
    assert png.startswith(b"\x89PNG")
    assert next(p for p in written if p.suffix == ".pdf").read_bytes().startswith(b"%PDF")
    assert not [p for p in written[0].parent.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_tables_content(written: list[Path], store: Store):
    folder = written[0].parent
    ablation = pd.read_csv(folder / "ablation_table.csv", dtype=str, keep_default_na=False)
    assert ablation["method"].tolist()[:4] == ["dense", "small_dense", "magnitude_structured", "magnitude_unstructured"]
    adl = ablation[ablation["method"] == "adaptive_dropout"]
    assert adl["locations"].tolist() == ["ffn+mhsa+conv"] * 3 + ["mhsa+conv", "ffn"]  # largest subsets first
    row = adl[(adl["locations"] == "ffn+mhsa+conv") & (adl["tau"] == "0.3") & (adl["alpha"] == "0.001")]
    assert row[["n_runs", "test_wer_pct_mean", "test_wer_pct_std", "params_mean"]].values.tolist() == [
        ["2", "24.50", "0.71", "520000"]]
    assert ablation.loc[ablation["method"] == "small_dense", "budget_params"].tolist() == [str(BUDGET)]
    markdown = (folder / "ablation_table.md").read_text()
    table, card = markdown.split("\n\n")  # the table, then its provenance card
    assert "| 24.50 ± 0.71 |" in table and table.count("\n") == len(ablation) + 1
    assert card.startswith(f"Provenance: {len(load_trials(store.tracking_uri, [EXPERIMENT]).frame)} runs made ")
    assert "commit " in card and "machine not recorded" in card  # the hand-made runs record no env.* tags

    pareto = pd.read_csv(folder / "pareto_runs.csv", dtype=str, keep_default_na=False)
    adl = pareto[pareto["method"] == "adaptive_dropout"]
    # the second seed of a setting (25 %, 540k) is dominated by the first (24 %, 500k)
    assert "adl-all-t0.3-a0.001-s1" not in set(adl["run_name"])
    assert adl["run_name"].tolist() == ["adl-all-t0.3-a0.01-s0", "adl-all-t1-a0.001-s0", "adl-all-t0.3-a0.001-s0",
                                        "adl-ffn-t0.3-a0.001-s0"]
    assert pareto.loc[pareto["method"] == "dense", "run_name"].tolist() == ["dense-s0"]
    runs = load_trials(store.tracking_uri, [EXPERIMENT]).frame.set_index("run_id")
    assert (runs["dev_wer"] != runs["test_wer"]).all()  # so a column showing the wrong split is caught
    for _, row in pareto.iterrows():  # each cell is its own run's figure
        run = runs.loc[row["run_id"]]
        for column, value, scale in (("test_wer_pct", "test_wer", 100), ("dev_wer_pct", "dev_wer", 100),
                                     ("params", "params", 1)):
            assert float(row[column]) == pytest.approx(scale * run[value], abs=0.006), (row["run_name"], column)


def test_every_row_has_a_bootstrap_interval_around_its_test_wer(written: list[Path]):
    folder = written[0].parent
    for name, mean in (("ablation_table", "test_wer_pct_mean"), ("pareto_runs", "test_wer_pct")):
        table = pd.read_csv(folder / f"{name}.csv")
        assert (table["test_wer_ci_low_pct"] <= table[mean] + 0.01).all() and (table[mean] <= table["test_wer_ci_high_pct"] + 0.01).all()
        assert (table["test_wer_ci_high_pct"] - table["test_wer_ci_low_pct"] > 0.5).all()  # 200 utterances: wide


def test_comparisons_pair_adaptive_dropout_with_dense_and_baselines_at_its_budget(written: list[Path]):
    table = pd.read_csv(written[0].parent / "comparisons.csv", dtype={"p_adl_better": float})
    row = table[table["adl"].str.startswith("adaptive_dropout ffn+mhsa+conv tau=0.3 alpha=0.001")]
    assert sorted(row["baseline"].str.split().str[0]) == ["dense", "magnitude_structured", "magnitude_unstructured",
                                                          "small_dense"]  # reduction 48% for all three, and dense
    against = dict(zip(row["baseline"].str.split().str[0], row["p_adl_better"]))
    assert against["small_dense"] > 0.9 and against["dense"] < 0.1  # 24.5% against 29% and 21%
    assert (table["seeds"] == table["seeds"].str.extract(r"^(\d+/\d+)$")[0]).all()
    ffn = table[table["adl"].str.startswith("adaptive_dropout ffn ")]  # 29% fewer: no baseline within 2 points
    assert ffn["baseline"].str.split().str[0].tolist() == ["dense"]


def test_bootstrap_on_hand_made_errors():
    from analysis import bootstrap
    words = np.full(50, 10.0)
    better, worse = (np.full(50, 1.0), words), (np.full(50, 2.0), words)
    idx = bootstrap.resamples(50, samples=200)
    assert bootstrap.interval([better], idx) == (0.1, 0.1)  # the same errors everywhere: no spread
    assert bootstrap.probability_better([better], [worse], idx) == 1.0
    assert bootstrap.probability_better([better], [better], idx) == 0.5
    noisy = (np.random.default_rng(1).integers(0, 4, 50).astype(float), words)
    low, high = bootstrap.interval([noisy], idx)
    assert low < noisy[0].sum() / words.sum() < high
    # two seeds: the interval of their mean lies between the two seeds' own intervals
    assert bootstrap.interval([better, worse], idx) == pytest.approx((0.15, 0.15))


def test_figures_are_logged_to_the_parent_run(store: Store, written: list[Path]):
    logged = {a.path for a in MlflowClient(store.tracking_uri).list_artifacts(store.parent_run_id, "figures")}
    assert logged == {f"figures/{p.name}" for p in written}


# --- what the figures show ---

@pytest.fixture(scope="module")
def sweep() -> pd.DataFrame:
    return pareto_sweep_frame()


def _looks(ax) -> dict[str, tuple[str, str]]:
    """Legend label -> (colour, marker) of each errorbar series drawn on ax."""
    return {c.get_label(): (c.lines[0].get_color(), c.lines[0].get_marker()) for c in ax.containers}


def test_tidy_reads_the_controller_target(sweep: pd.DataFrame):
    adl = sweep[sweep["method"] == "adaptive_dropout"]
    controller = adl[adl["adl_target_reduction"].notna()]
    assert sorted(set(controller["adl_target_reduction"])) == [0.3, 0.5, 0.7]
    assert controller["alpha"].isna().all()  # the controller has no α
    assert adl.loc[adl["adl_target_reduction"].isna(), "alpha"].notna().all()
    assert sweep.loc[sweep["method"] != "adaptive_dropout", "adl_target_reduction"].isna().all()


def test_pareto_tells_controller_regulariser_and_variants_apart(sweep: pd.DataFrame, store: Store):
    looks = _looks(figures.pareto(sweep, "params").axes[0])
    controller, regulariser = (looks.pop(f"adaptive dropout, {kind} (6 trials)")
                               for kind in ("budget controller", "paper's regulariser (α)"))
    assert controller[0] != regulariser[0] and controller[1] != regulariser[1]
    # structured magnitude pruning with and without fine-tuning: two lines, two looks
    tuned, untuned = (looks.pop(f"magnitude, structured:\n  prune.finetune_epochs={e} (6 trials)") for e in (2, 0))
    assert tuned != untuned
    assert sorted(looks) == ["dense (2 trials)", "magnitude, unstructured (6 trials)", "small dense (6 trials)"]
    # the paper's regulariser at other locations or temperatures: one line each, named by what differs
    frame = load_trials(store.tracking_uri, [EXPERIMENT]).frame
    adl = {k: v for k, v in _looks(figures.pareto(frame, "params").axes[0]).items() if k.startswith("adaptive")}
    assert sorted(k.split(":\n  ")[1] for k in adl) == [
        "ffn+mhsa+conv, τ=0.3 (3 trials)", "ffn+mhsa+conv, τ=1 (1 trial)", "ffn, τ=0.3 (2 trials)",
        "mhsa+conv, τ=0.3 (1 trial)"]
    assert len(set(adl.values())) == 4


def test_pareto_wer_axis_is_log_with_percent_ticks(sweep: pd.DataFrame):
    ax = figures.pareto(sweep, "latency").axes[0]
    assert ax.get_yscale() == "log"
    low, high = ax.get_ylim()
    assert low < 100 * sweep["test_wer"].min() and 100 * sweep["test_wer"].max() < high  # 5.9% and 103% both shown
    labels = [ax.yaxis.get_major_formatter()(v, i) for i, v in enumerate(ax.get_yticks()) if low <= v <= high]
    assert {"7%", "10%", "15%", "20%", "50%", "100%"} <= set(labels)


def test_pareto_marks_the_reduction_each_point_asked_for(sweep: pd.DataFrame, store: Store):
    ax = figures.pareto(sweep, "params").axes[0]
    (top,) = ax.child_axes  # the targets, named on a top axis over dotted lines at dense x (1 - target)
    assert [t.get_text() for t in top.get_xticklabels()] == ["30%", "50%", "70%"]
    expected = [DENSE_SIZE * (1 - t) / 1e6 for t in (0.3, 0.5, 0.7)]
    assert top.get_xticks() == pytest.approx(expected)
    assert [line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() == ":"] == pytest.approx(expected)
    # on FLOPs a target has no x of its own: each point says it; five lines aimed at each target
    texts = [t.get_text() for t in figures.pareto(sweep, "flops").axes[0].texts]
    assert sorted(texts) == ["30%"] * 5 + ["50%"] * 5 + ["70%"] * 5
    # baselines given a parameter budget (520k of 1M) asked for 48%
    frame = load_trials(store.tracking_uri, [EXPERIMENT]).frame
    assert sorted(t.get_text() for t in figures.pareto(frame, "flops").axes[0].texts) == ["48%"] * 3


def test_effect_of_alpha_ignores_the_controller(sweep: pd.DataFrame):
    ax = figures.hyperparameter_effect(sweep, "alpha").axes[0]
    assert ax.get_xscale() == "log"  # 0.005 to 0.08; the controller's missing α must not make it linear
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.005", "0.02", "0.08"]


def test_retention_panels_x_labels_end_before_the_next_panel(store: Store):
    frame = load_trials(store.tracking_uri, [EXPERIMENT]).frame
    adl = frame.loc[frame["method"] == "adaptive_dropout", "run_id"]
    with style():  # the fonts the figures are saved with
        fig = figures.retention_histograms(frame, load_retention(MlflowClient(store.tracking_uri), adl))
        fig.draw_without_rendering()
        ends = [ax.xaxis.label.get_window_extent().x1 for ax in fig.axes]
        starts = [ax.yaxis.get_tightbbox().x0 for ax in fig.axes]  # the y axis label and tick labels
    assert len(ends) == 3 and all(end < start for end, start in zip(ends, starts[1:]))


def test_location_ablation_draws_each_subsets_trials_and_their_mean(store: Store):
    """Per location subset, a bar at the mean of its trials (the dots), for test WER and for the reduction,
    and every dot an adaptive-dropout trial's own figure."""
    frame = load_trials(store.tracking_uri, [EXPERIMENT]).frame
    adl = frame[frame["method"] == "adaptive_dropout"]
    fig = figures.location_ablation(frame)
    for ax, value in zip(fig.axes[:2], ("test_wer", "reduction")):
        bars = [patch.get_height() for patch in ax.patches]
        dots = [c.get_offsets()[:, 1] for c in ax.collections if isinstance(c, PathCollection)]  # a subset each
        assert len(bars) == len(dots) >= 2
        for height, points in zip(bars, dots):
            assert height == pytest.approx(points.mean())
            assert all(any(p == pytest.approx(v) for v in 100 * adl[value]) for p in points)
        labels = [t.get_text() for t in ax.get_xticklabels()]
        assert [label.rsplit("(n=", 1)[1] for label in labels] == [f"{len(points)})" for points in dots]


def test_effect_of_tau_plots_wer_at_each_temperature_tried(store: Store):
    frame = load_trials(store.tracking_uri, [EXPERIMENT]).frame
    adl = frame[frame["method"] == "adaptive_dropout"]
    ax = figures.hyperparameter_effect(frame, "tau").axes[0]
    (line,) = [c for c in ax.containers]  # one line: tau was varied with the other settings held once
    x, y = line.lines[0].get_xdata(), line.lines[0].get_ydata()
    assert sorted(x) == sorted(set(adl["tau"]))  # 0.3 and 1
    for tau, wer in zip(x, y):
        same = adl[(adl["tau"] == tau) & (adl["locations"] == "ffn+mhsa+conv") & (adl["alpha"] == 0.001)]
        assert wer == pytest.approx(100 * same["test_wer"].mean())  # seeds averaged, α held at the one both τ share


def test_figures_without_their_data_are_skipped(store: Store):
    frame = load_trials(store.tracking_uri, [EXPERIMENT]).frame
    baselines = frame[frame["method"] != "adaptive_dropout"]
    for draw in (figures.location_ablation, lambda f: figures.hyperparameter_effect(f, "tau")):
        with pytest.raises(figures.Skipped, match="no finished adaptive_dropout trials"):
            draw(baselines)
    with pytest.raises(figures.Skipped, match="no finished adaptive_dropout trial has a retention.json"):
        figures.retention_histograms(baselines, {})
    with pytest.raises(figures.Skipped, match="only one location subset"):
        figures.location_ablation(frame[frame["locations"].isin(["none", "ffn"])])
    with pytest.raises(figures.Skipped, match="adl.tau is 0.3 in every"):
        figures.hyperparameter_effect(frame[frame["tau"] != 1.0], "tau")
    with pytest.raises(figures.Skipped, match="no finished trial logged latency"):
        figures.pareto(frame.assign(latency_ms=np.nan), "latency")
    figures.pareto(baselines, "params")  # a sweep of baselines alone still gets its Pareto plot


def test_a_failing_save_leaves_no_file(tmp_path: Path, monkeypatch):
    fig, _ = new_figure()

    def half_then_fail(path, **kwargs):
        Path(path).write_bytes(b"half a figure")
        raise RuntimeError("disk full")

    monkeypatch.setattr(fig, "savefig", half_then_fail)
    folder = tmp_path / "figures"
    folder.mkdir()
    with pytest.raises(RuntimeError):
        save(fig, folder / "figure")
    assert list(folder.iterdir()) == []


# --- the command line ---

@pytest.mark.slow
def test_cli_runs_on_a_machine_without_torch(store: Store, written: list[Path], tmp_path: Path):
    """`python -m analysis EXPERIMENT --parent-run ID` with torch unimportable (a machine that only reads a
    tracking server): it logs to that run, and its tables are byte for byte those of another regeneration."""
    script = f"""
import sys
sys.modules["torch"] = None  # any `import torch` now raises ImportError
from analysis.__main__ import main
code = main([{EXPERIMENT!r}, "--tracking-uri", {store.tracking_uri!r}, "--out", {str(tmp_path)!r},
             "--parent-run", {store.parent_run_id!r}])
assert not [m for m, mod in sys.modules.items() if mod is not None and m.startswith("torch")], "torch imported"
sys.exit(code)
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"logged them to run {store.parent_run_id}" in done.stdout
    for table in TABLES:
        for ext in ("csv", "md"):
            first = written[0].parent / f"{table}.{ext}"
            assert (tmp_path / EXPERIMENT / f"{table}.{ext}").read_bytes() == first.read_bytes(), first.name


def test_cli_experiment_without_finished_runs_exits_3(store: Store, tmp_path: Path, capsys):
    assert main([BROKEN, "--tracking-uri", store.tracking_uri, "--out", str(tmp_path)]) == 3
    captured = capsys.readouterr()
    assert f"experiment '{BROKEN}' has no finished trial runs (1 failed or unfinished)" in captured.err
    assert "left out adl-ffn+conv-t0.3-a0.001-s0 (run " in captured.out
    assert "FAILED: FloatingPointError: loss is NaN)" in captured.out
    assert not (tmp_path / BROKEN).exists()
    with pytest.raises(NoFinishedRuns):
        regenerate(BROKEN, store.tracking_uri, tmp_path)


def test_cli_unknown_experiment_exits_2(store: Store, tmp_path: Path, capsys):
    assert main(["nope", "--tracking-uri", store.tracking_uri, "--out", str(tmp_path)]) == 2
    assert "no experiment named 'nope'" in capsys.readouterr().err
    assert main(["--parent-run", "0" * 32, "--tracking-uri", store.tracking_uri, "--out", str(tmp_path)]) == 2


def test_cli_store_without_trials_exits_3(store: Store, tmp_path: Path, capsys):
    # a copy of the store with every run deleted (a fresh store would spend seconds creating its tables)
    shutil.copy(store.tracking_uri.removeprefix("sqlite:///"), tmp_path / "empty.db")
    uri = f"sqlite:///{tmp_path / 'empty.db'}"
    client = MlflowClient(uri)
    for run in client.search_runs([e.experiment_id for e in client.search_experiments()]):
        client.delete_run(run.info.run_id)
    assert main(["--tracking-uri", uri, "--out", str(tmp_path)]) == 3
    assert "has trial runs" in capsys.readouterr().err


def test_cli_with_no_experiment_or_several_regenerates_each_and_removes_stale_files(store: Store, tmp_path: Path,
                                                                                     capsys):
    """No experiment named: every experiment with trial runs; several named: each, the exit code the worst.
    A table or figure the runs no longer give (here no search trials, so no importances) is removed, not
    left from an older regeneration."""
    stale = tmp_path / EXPERIMENT / "importances.csv"
    stale.parent.mkdir(parents=True)
    stale.write_text("an older regeneration's table\n")
    assert main(["--tracking-uri", store.tracking_uri, "--out", str(tmp_path)]) == 3  # BROKEN has none finished
    out = capsys.readouterr().out
    assert "skipped table importances" in out and not stale.exists()
    assert (tmp_path / EXPERIMENT / "pareto_params.png").is_file() and not (tmp_path / BROKEN).exists()
    # each named one is tried, and an unknown one (2) outranks one with nothing finished (3)
    assert main([BROKEN, "nope", "--tracking-uri", store.tracking_uri, "--out", str(tmp_path / "both")]) == 2
    err = capsys.readouterr().err
    assert f"experiment '{BROKEN}' has no finished trial runs" in err and "no experiment named 'nope'" in err
