"""Where MLflow keeps what the harness logs, how the UI is pointed at it, and when a dense run may be reused."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import mlflow

from study.tracking.store import (
    artifact_location,
    ensure_experiment,
    resolve_tracking_uri,
    runs_url,
)

REPO = Path(__file__).resolve().parents[1]


def test_artifacts_go_beside_the_store_under_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = resolve_tracking_uri()  # the default: runs/mlflow.db in the working directory
    assert uri == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    assert artifact_location(uri) == (tmp_path / "runs" / "artifacts").as_uri()
    assert artifact_location("http://mlflow:5000") is None  # a tracking server keeps its own store

    experiment_id = ensure_experiment(uri, "fresh")
    assert ensure_experiment(uri, "fresh") == experiment_id
    experiment = mlflow.MlflowClient(uri).get_experiment(experiment_id)
    assert experiment.artifact_location == (tmp_path / "runs" / "artifacts").as_uri()
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on its runs
    with mlflow.start_run(experiment_id=experiment_id):
        mlflow.log_text("hello", "note.txt")
    assert list((tmp_path / "runs" / "artifacts").rglob("note.txt")) and not (tmp_path / "mlruns").exists()


def test_an_experiment_made_elsewhere_is_tagged_for_the_ui(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    old = mlflow.MlflowClient(uri).create_experiment("old", artifact_location=(tmp_path / "old").as_uri())
    assert ensure_experiment(uri, "old") == old
    experiment = mlflow.MlflowClient(uri).get_experiment(old)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert experiment.artifact_location == (tmp_path / "old").as_uri()  # never moved


def test_runs_url():
    assert runs_url("sqlite:////x/runs/mlflow.db", "3") == \
        "http://127.0.0.1:5000/#/experiments/3/runs?workflowType=machine_learning"
    url = runs_url("http://mlflow:5000/", "3", "abc")
    assert url.startswith("http://mlflow:5000/#/experiments/3/runs?workflowType=machine_learning&searchFilter=")
    assert url.endswith("tags.%60mlflow.parentRunId%60%20%3D%20%27abc%27")


def _recipe_key_in(root: Path) -> str:
    script = "import study; from study.config import Config; from study.tracking.code_identity import recipe_key; " \
             "print(study.__file__); print(recipe_key(Config()))"
    done = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True,
                          env={"PATH": "", "PYTHONPATH": str(root)})
    assert done.returncode == 0, done.stderr[-2000:]
    where, key = done.stdout.split()
    assert Path(where).is_relative_to(root)
    return key


def test_a_dense_run_of_other_model_or_training_code_has_another_recipe_key(tmp_path):
    """Magnitude baselines reuse a dense run by its recipe key: the key must change with the code that
    trains a dense model, not only with its configuration."""
    copies = {}
    for name in ("same", "same_again", "other_model", "other_training"):
        copies[name] = tmp_path / name
        shutil.copytree(REPO / "study", copies[name] / "study", ignore=shutil.ignore_patterns("__pycache__"))
    with open(copies["other_model"] / "study" / "model" / "conformer.py", "a") as f:
        f.write("\nSOMETHING_NEW = 1\n")
    with open(copies["other_training"] / "study" / "training.py", "a") as f:
        f.write("\n# a changed comment is a changed file: never reuse silently\n")
    keys = {name: _recipe_key_in(root) for name, root in copies.items()}
    assert keys["same"] == keys["same_again"]
    assert len({keys["same"], keys["other_model"], keys["other_training"]}) == 3


def test_run_names_say_what_pushed_the_logits(tiny_config):
    from study.tracking.mlflow_runs import run_label
    tiny_config.method = "adaptive_dropout"
    tiny_config.adl.alpha, tiny_config.adl.tau = 0.02, 0.5
    assert run_label(tiny_config) == "adl-ffn+mhsa+conv-tau0.5-alpha0.02-s0"
    tiny_config.adl.target_reduction = 0.3  # the controller replaces alpha
    assert run_label(tiny_config) == "adl-ffn+mhsa+conv-tau0.5-budget0.3-s0"
    tiny_config.adl.target_measure = "expected"
    assert run_label(tiny_config) == "adl-ffn+mhsa+conv-tau0.5-budget0.3-expected-s0"
    tiny_config.adl.target_measure, tiny_config.adl.init, tiny_config.adl.pruning_epochs = "cut", "dense", 6
    tiny_config.adl.distill = 1.0  # from a trained model: k epochs and the teacher's weight
    assert run_label(tiny_config) == "adl-ffn+mhsa+conv-tau0.5-budget0.3-from-dense-k6-kd1-s0"
    tiny_config.method, tiny_config.prune.target_reduction, tiny_config.prune.finetune_epochs = "magnitude_structured", 0.5, 2
    tiny_config.prune.distill = 0.5
    assert run_label(tiny_config) == "mag-struct-r0.5-ft2-kd0.5-s0"
    tiny_config.method, tiny_config.prune.source_run = "retrain_pruned", "0123456789abcdef0123456789abcdef"
    assert run_label(tiny_config) == "retrain-01234567-s0"


def test_a_magnitude_trials_dense_source_is_the_sweeps_dense_trial(tmp_path):
    """An experiment's [adl] table reaches its dense and magnitude points; the dense source a magnitude
    trial trains (or waits for) must be the sweep's dense trial, one folder and one lock, or the two
    train the same model side by side (seen: an FSDD sweep trained dense seed 1 twice)."""
    import dataclasses

    from study.config import AdlConfig, Config, PruneConfig
    from study.tracking.dense_source import dense_config
    from study.tracking.trial_record import trial_dir
    base = Config(adl=AdlConfig(alpha=0.02, tau=0.5))
    sweep_dense = dataclasses.replace(base, method="dense")
    magnitude = dataclasses.replace(base, method="magnitude_structured", prune=PruneConfig(target_reduction=0.5))
    assert trial_dir(dense_config(magnitude), tmp_path) == trial_dir(sweep_dense, tmp_path)
    tuned = dataclasses.replace(magnitude, prune=PruneConfig(target_reduction=0.7))
    assert trial_dir(tuned, tmp_path) != trial_dir(magnitude, tmp_path)  # what a method reads still counts
    other_adl = dataclasses.replace(base, method="adaptive_dropout", adl=AdlConfig(alpha=0.01))
    assert trial_dir(other_adl, tmp_path) != trial_dir(dataclasses.replace(base, method="adaptive_dropout"), tmp_path)


def test_a_sqlite_connection_waits_for_another_process_lock(tmp_path):
    """A sweep's processes write one SQLite file: a connection waits SQLITE_BUSY_SECONDS for a lock, not
    sqlite3's 5 s (on a busy machine a store's opening failed with "database is locked")."""
    import sqlalchemy

    from study.tracking.store import SQLITE_BUSY_SECONDS
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'store.db'}")
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == SQLITE_BUSY_SECONDS * 1000
