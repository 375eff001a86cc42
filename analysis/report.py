"""Regenerating one experiment's figures and tables from its runs in MLflow (never retraining), and
logging them to the sweep's parent run."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from matplotlib.figure import Figure
from mlflow.tracking import MlflowClient

from analysis import factors, figures, from_dense, importance, provenance, quantized, tables
from analysis.bundle import Inputs, from_store
from analysis.plotting import FORMATS, save, style
from analysis.runs import NoFinishedRuns

ARTIFACT_PATH = "figures"


def _comparisons(inputs: Inputs) -> tables.Table:
    table = tables.comparison_table(inputs.trials.frame, inputs.errors)
    if not len(table.rows):
        raise figures.Skipped("no adaptive-dropout run with a baseline to compare, or no per-utterance errors "
                              "(runs before they were logged)")
    return table


# Every table of an experiment, by file name; a maker raises Skipped when the runs do not give its table
TABLES: dict[str, Callable[[Inputs], tables.Table]] = {
    "ablation_table": lambda inputs: tables.ablation_table(inputs.trials.frame, inputs.errors),
    "pareto_runs": lambda inputs: tables.pareto_table(inputs.trials.frame, inputs.errors),
    "comparisons": _comparisons,
    "from_dense_comparisons": lambda inputs: from_dense.equal_training_table(inputs.trials.frame, inputs.errors),
    "from_dense_references": lambda inputs: from_dense.dense_references_table(inputs.trials.frame, inputs.errors),
    "from_dense_additions": lambda inputs: from_dense.additions_table(inputs.trials.frame, inputs.errors),
    "from_dense_headline": lambda inputs: from_dense.headline_table(inputs.trials.frame, inputs.errors),
    "factors": lambda inputs: factors.factor_table(inputs.trials.frame, inputs.errors),
    "int8": lambda inputs: quantized.int8_table(inputs.trials.frame),
    "importances": lambda inputs: importance.importance_table(inputs.trials.frame),
    "provenance": lambda inputs: provenance.provenance_table(inputs.runs, inputs.trials.frame["run_id"]),
}


def table_markdown(inputs: Inputs, name: str) -> str:
    """One table's Markdown with its provenance card, as write_outputs writes it to <name>.md."""
    return tables.markdown_text(TABLES[name](inputs), provenance.card(inputs.runs, inputs.trials.frame["run_id"]))


def regenerate(experiment: str, tracking_uri: str, out_dir: Path = Path("figures"),
               parent_run_id: str | None = None) -> list[Path]:
    """Writes the figures and tables of `experiment` under out_dir/<experiment>/ and logs them to the
    sweep's parent run (parent_run_id, else the experiment's latest one). With parent_run_id only that
    sweep's trials are read. Returns the files written.

    Raises ExperimentNotFound for an unknown experiment or run, NoFinishedRuns when no trial finished.
    """
    inputs = from_store(experiment, tracking_uri, parent_run_id)
    written = write_outputs(inputs, out_dir)
    parent = parent_run_id or inputs.trials.parents.get(experiment)
    if parent:
        client = MlflowClient(tracking_uri)
        for path in written:
            client.log_artifact(parent, str(path), ARTIFACT_PATH)
        print(f"logged them to run {parent} under {ARTIFACT_PATH}/", flush=True)
    else:
        print(f"experiment {experiment!r} has no sweep parent run: the files were not logged to MLflow", flush=True)
    return written


def write_outputs(inputs: Inputs, out_dir: Path = Path("figures")) -> list[Path]:
    """The figures and tables of one experiment's runs (from the store or a results bundle) under
    out_dir/<experiment>/; a figure or table the runs no longer give is removed. Returns the files written."""
    experiment, trials = inputs.experiment, inputs.trials
    print(trials.report(experiment), flush=True)
    frame = trials.frame
    if frame.empty:
        left = trials.excluded
        raise NoFinishedRuns(f"experiment {experiment!r} has no finished trial runs"
                             + (f" ({len(left)} failed or unfinished)" if len(left) else ""))
    target = Path(out_dir) / experiment
    target.mkdir(parents=True, exist_ok=True)
    errors, retention, history = inputs.errors, inputs.retention, inputs.history
    note = provenance.card(inputs.runs, frame["run_id"])
    drawings: dict[str, Callable[[], Figure]] = {
        "pareto_params": lambda: figures.pareto(frame, "params", errors),
        "pareto_flops": lambda: figures.pareto(frame, "flops", errors),
        "pareto_latency": lambda: figures.pareto(frame, "latency", errors),
        "location_ablation": lambda: figures.location_ablation(frame, errors),
        "effect_tau": lambda: figures.hyperparameter_effect(frame, "tau", errors),
        "effect_alpha": lambda: figures.hyperparameter_effect(frame, "alpha", errors),
        "retention_histograms": lambda: figures.retention_histograms(frame, retention),
        "kept_fraction": lambda: figures.kept_fraction(frame, history),
        "from_dense_extra_epochs": lambda: from_dense.extra_epochs_figure(frame, errors),
        "int8": lambda: quantized.int8_figure(frame),
    }
    written = []
    for name, draw in drawings.items():
        with style():
            try:
                fig = draw()
            except figures.Skipped as why:
                print(f"skipped figure {name}: {why}", flush=True)
                for fmt in FORMATS:  # a figure from older runs would now be wrong
                    (target / f"{name}.{fmt}").unlink(missing_ok=True)
                continue
            written += save(fig, target / name, note)
    for name, make in TABLES.items():
        try:
            table = make(inputs)
        except figures.Skipped as why:
            print(f"skipped table {name}: {why}", flush=True)
            for suffix in (".csv", ".md"):  # a table from older runs would now be wrong
                (target / f"{name}{suffix}").unlink(missing_ok=True)
            continue
        written += tables.write_table(table, target / name, note)
        if name == "importances":
            print(f"Optuna PED-ANOVA importances:\n{table.markdown()}", flush=True)
    print(f"wrote {len(written)} files to {target}", flush=True)
    return written
