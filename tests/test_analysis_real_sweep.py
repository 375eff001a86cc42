"""The analysis on a store written by a real sweep (the other analysis tests read a hand-made one): a tiny
grid of dense, adaptive dropout and structured magnitude pruning, run by `sweep.py` with its analysis
step, writes figures and tables whose rows are the runs' own figures, read back by the tags the trials
wrote."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import mlflow
import pytest

import sweep
from analysis.runs import load_trials
from tests.helpers import child_runs, write_experiment

pytestmark = pytest.mark.slow  # a sweep of three trials

THREE_METHODS = """
[sweep]
[[sweep.arms]]
name = "dense"
set = { method = "dense" }
[[sweep.arms]]
name = "adl"
set = { method = "adaptive_dropout" }
[[sweep.arms]]
name = "magnitude"
set = { method = "magnitude_structured", "prune.target_reduction" = 0.3 }
"""


@pytest.fixture(scope="module")
def real_sweep(tmp_path_factory, corpus_cache) -> tuple[Path, str, int]:
    folder = tmp_path_factory.mktemp("real_sweep")
    exp = write_experiment(folder, corpus_cache, THREE_METHODS, epochs=2)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    here = os.getcwd()
    os.chdir(folder)  # figures/ and runs/ are written under the working directory
    try:
        code = sweep.main([str(exp), "--tracking-uri", uri])
    finally:
        os.chdir(here)
    return folder, uri, code


def test_a_sweep_with_its_analysis_writes_figures_and_tables_of_its_runs(real_sweep):
    folder, uri, code = real_sweep
    assert code == 0
    figures = folder / "figures" / "tiny_sweep"
    for name in ("pareto_params.png", "pareto_params.pdf", "ablation_table.csv", "pareto_runs.md"):
        assert (figures / name).stat().st_size > 0, name
    children, _ = child_runs(uri)
    finished = {r.info.run_id: r for r in children if r.info.status == "FINISHED"}
    assert len(finished) == 3
    with open(figures / "pareto_runs.csv") as table:
        rows = list(csv.DictReader(table))
    assert rows and {row["run_id"] for row in rows} <= set(finished)
    for row in rows:  # each row is its run's figures
        run = finished[row["run_id"]]
        assert float(row["test_wer_pct"]) == pytest.approx(100 * run.data.metrics["test/wer"], abs=0.006)
        assert int(row["params"]) == int(run.data.metrics["params/total"])


def test_the_analysis_reads_the_tags_the_trials_wrote(real_sweep):
    _, uri, _ = real_sweep
    frame = load_trials(uri, ["tiny_sweep"]).frame.set_index("run_id")
    children, parents = child_runs(uri)
    assert sorted(frame["method"]) == ["adaptive_dropout", "dense", "magnitude_structured"]
    for run in children:
        row = frame.loc[run.info.run_id]
        assert row["method"] == run.data.params["method"]
        assert row["seed"] == int(run.data.params["train.seed"])
        assert row["parent_run_id"] == parents[0].info.run_id
        assert row["params"] == run.data.metrics["params/total"]
        assert row["test_wer"] == pytest.approx(run.data.metrics["test/wer"])
    assert frame.loc[frame["method"] == "magnitude_structured", "target_reduction"].tolist() == [0.3]
    artifacts = mlflow.MlflowClient(uri).list_artifacts(parents[0].info.run_id, "figures")
    assert any(a.path.endswith("pareto_params.png") for a in artifacts)  # logged to the sweep's parent
