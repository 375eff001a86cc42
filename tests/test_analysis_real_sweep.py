"""The analysis on a store written by a real sweep (the other analysis tests read a hand-made one): the
shipped smoke experiment (every method once, tiny), run by `sweep.py` with its analysis step, writes
figures and tables whose rows are the runs' own figures, read back by the tags the trials wrote; and
its runs are the ones docs/getting-started.md tells a new user to expect."""
from __future__ import annotations

import csv
import gzip
import json
import os
import re
from pathlib import Path

import mlflow
import pytest

import sweep
from analysis.runs import load_trials
from study.names import METHODS
from tests.helpers import ROOT, child_runs

# a sweep of eight tiny trials, two at a time, run once: its tests share one xdist worker
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("analysis_real_sweep")]

SMOKE = ROOT / "experiments" / "smoke.toml"


@pytest.fixture(scope="module")
def real_sweep(tmp_path_factory) -> tuple[Path, str, int]:
    folder = tmp_path_factory.mktemp("smoke")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    here = os.getcwd()
    os.chdir(folder)  # figures/ and runs/ (its corpus cache too) are written under the working directory
    try:
        code = sweep.main([str(SMOKE), "--tracking-uri", uri])
    finally:
        os.chdir(here)
    return folder, uri, code


def test_a_sweep_with_its_analysis_writes_figures_and_tables_of_its_runs(real_sweep):
    folder, uri, code = real_sweep
    assert code == 0
    figures = folder / "figures" / "smoke"
    for name in ("pareto_params.png", "pareto_params.pdf", "ablation_table.csv", "pareto_runs.md"):
        assert (figures / name).stat().st_size > 0, name
    children, _ = child_runs(uri, "smoke")
    finished = {r.info.run_id: r for r in children if r.info.status == "FINISHED"}
    assert len(finished) == 10
    with open(figures / "pareto_runs.csv") as table:
        rows = list(csv.DictReader(table))
    assert rows and {row["run_id"] for row in rows} <= set(finished)
    for row in rows:  # each row is its run's figures
        run = finished[row["run_id"]]
        assert float(row["test_wer_pct"]) == pytest.approx(100 * run.data.metrics["test/wer"], abs=0.006)
        assert int(row["params"]) == int(run.data.metrics["params/total"])


def test_the_analysis_reads_the_tags_the_trials_wrote(real_sweep):
    _, uri, _ = real_sweep
    frame = load_trials(uri, ["smoke"]).frame.set_index("run_id")
    children, parents = child_runs(uri, "smoke")
    assert set(frame["method"]) == set(METHODS)
    for run in children:
        row = frame.loc[run.info.run_id]
        assert row["method"] == run.data.params["method"]
        assert row["seed"] == int(run.data.params["train.seed"])
        assert row["parent_run_id"] == parents[0].info.run_id
        assert row["params"] == run.data.metrics["params/total"]
        assert row["test_wer"] == pytest.approx(run.data.metrics["test/wer"])
    assert frame.loc[frame["method"] == "magnitude_structured", "target_reduction"].tolist() == [0.5]
    artifacts = mlflow.MlflowClient(uri).list_artifacts(parents[0].info.run_id, "figures")
    assert any(a.path.endswith("pareto_params.png") for a in artifacts)  # logged to the sweep's parent


def _expected_smoke_rows() -> dict[str, tuple[str, int, float, float]]:
    page = (ROOT / "docs" / "getting-started.md").read_text()
    block = page.split("<!-- smoke: expected -->")[1].split("<!-- smoke: end -->")[0]
    rows = {}
    for line in block.strip().splitlines()[2:]:  # past the header and its rule
        run, method, params, fewer, dev = (cell.strip() for cell in line.strip("|").split("|"))
        rows[run.replace("&lt;source&gt;", "<source>")] = (method, int(params.replace(",", "")),
                                                          float(fewer.rstrip("%")), float(dev.rstrip("%")))
    return rows


def test_the_smoke_experiment_gives_what_getting_started_shows(real_sweep):
    _, uri, _ = real_sweep
    children, _ = child_runs(uri, "smoke")
    expected = _expected_smoke_rows()
    got = {re.sub(r"^retrain-[0-9a-f]+-", "retrain-<source>-", run.info.run_name): run for run in children}
    assert set(got) == set(expected)
    for name, (method, params, fewer, dev) in expected.items():
        metrics = got[name].data.metrics
        assert got[name].data.params["method"] == method
        assert metrics["params/total"] == pytest.approx(params, rel=0.02), name
        assert 100 * metrics["params/reduction"] == pytest.approx(fewer, abs=5), name
        assert 100 * metrics["dev/wer"] == pytest.approx(dev, abs=5), name


def test_a_results_bundle_regenerates_every_file_the_store_gives(real_sweep, tmp_path):
    from analysis.__main__ import main as analysis
    folder, uri, _ = real_sweep
    bundle = tmp_path / "results" / "smoke.json.gz"
    assert analysis(["export", "smoke", "--tracking-uri", uri, "--out", str(bundle)]) == 0
    assert analysis(["--from", str(bundle), "--out", str(tmp_path / "from_bundle")]) == 0
    sweeps_own = folder / "figures"  # what the sweep's own analysis step wrote from the store
    made = {name: {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}
            for name, root in (("from_store", sweeps_own), ("from_bundle", tmp_path / "from_bundle"))}
    assert len(made["from_store"]) > 10 and made["from_bundle"].keys() == made["from_store"].keys()
    for name, data in made["from_store"].items():
        assert made["from_bundle"][name] == data, name  # byte for byte, figures included
    from analysis.bundle import from_store, read_bundle
    stored, bundled = from_store("smoke", uri).runs, read_bundle(bundle).runs
    assert list(bundled.columns) == list(stored.columns) and bundled.equals(stored)  # values and dtypes

    assert analysis(["export", "smoke", "--tracking-uri", uri, "--out", str(bundle)]) == 0  # same code: replaced
    with gzip.open(bundle, "rt") as source:
        document = json.load(source)
    document["code"]["code_hash"] = ["0123456789abcdef"]  # as if its runs came from other code
    with gzip.open(bundle, "wt") as out:
        json.dump(document, out)
    assert analysis(["export", "smoke", "--tracking-uri", uri, "--out", str(bundle)]) == 2
    assert analysis(["export", "smoke", "--tracking-uri", uri, "--out", str(bundle), "--force"]) == 0
    assert analysis(["--from", str(sweeps_own / "smoke" / "pareto_runs.csv")]) == 2  # not a bundle


def test_every_table_and_figure_carries_the_provenance_of_its_runs(real_sweep):
    folder, uri, _ = real_sweep
    from PIL import Image

    children, _ = child_runs(uri, "smoke")
    tags, commit = children[0].data.tags, children[0].data.params["code_version"]
    figures = folder / "figures" / "smoke"
    card = (figures / "pareto_runs.md").read_text().strip().splitlines()[-1]
    assert card.startswith("Provenance: 10 runs made ") and f"commit {commit};" in card
    for recorded in (tags["env.code_hash"], tags["env.cpu"], f"{tags['env.cores']} cores", "1 thread(s)",
                     f"torch {tags['env.torch']}", f"mlflow {tags['env.mlflow']}"):
        assert recorded in card, recorded
    for table in figures.glob("*.md"):
        assert table.read_text().strip().splitlines()[-1] == card, table.name
    assert Image.open(figures / "pareto_params.png").text["Description"] == card
    assert f"| {commit} | {tags['env.code_hash']} |" in (figures / "provenance.md").read_text()


def test_a_table_published_from_a_bundle_is_checked_against_it(real_sweep, tmp_path):
    from analysis.__main__ import main as analysis
    from analysis.doc_tables import main as doc_tables, stale_blocks
    _, uri, _ = real_sweep
    bundle = tmp_path / "smoke.json.gz"
    assert analysis(["export", "smoke", "--tracking-uri", uri, "--out", str(bundle)]) == 0
    page = tmp_path / "page.md"
    page.write_text(f"Before.\n\n<!-- table from {bundle}: pareto_runs -->\n<!-- end of table -->\n\nAfter.\n")
    assert stale_blocks(page) and doc_tables(["--check", str(page)]) == 1  # empty: not what the bundle gives
    assert doc_tables([str(page)]) == 0 and stale_blocks(page) == []  # filled
    text = page.read_text()
    assert text.startswith("Before.\n\n") and text.endswith("<!-- end of table -->\n\nAfter.\n")
    assert "| Method |" in text and "Provenance: 10 runs made " in text
    dense_row = next(line for line in text.splitlines() if line.startswith("| dense |"))
    page.write_text(text.replace(dense_row, dense_row.replace("100.00", "99.00", 1)))  # a figure edited by hand
    assert stale_blocks(page) == [f"{page}: {bundle} pareto_runs"] and doc_tables(["--check", str(page)]) == 1
