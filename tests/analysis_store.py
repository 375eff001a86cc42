"""A small MLflow store laid out as sweep.py writes one, with made-up results: used by the analysis
and MLflow UI tests instead of training anything.

Experiment "ablation": one sweep parent run with trial children (dense, adaptive dropout at several
location subsets, temperatures and penalty weights, two seeds for some, the three budget-matched
baselines), one FAILED and one RUNNING trial, a dense run outside the sweep that the baselines were
derived from, and a stray run that is not a trial. Experiment "broken": one FAILED trial only.
"""
from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from study.config import Config, build, flatten, to_dict
from study.tracking.store import ensure_experiment

EXPERIMENT, BROKEN = "ablation", "broken"
PARENT_NAME = "sweep-20260101-120000"
EPOCHS = 4
DENSE_PARAMS, DENSE_FLOPS, DENSE_LATENCY = 1_000_000, 2.0e9, 20.0
BUDGET = 520_000


@dataclass
class Trial:
    name: str
    method: str
    test_wer: float
    reduction: float = 0.0
    locations: tuple[str, ...] = ()
    tau: float = 1.0
    alpha: float = 0.01
    seed: int = 0
    budget: int = 0
    status: str = "FINISHED"
    in_sweep: bool = True
    extra_tags: dict[str, str] = field(default_factory=dict)

    @property
    def params(self) -> int:
        return round(DENSE_PARAMS * (1 - self.reduction))


TRIALS = [
    Trial("dense-s1", "dense", 0.210, seed=1),
    Trial("adl-all-t0.3-a0.001-s0", "adaptive_dropout", 0.240, 0.50, ("ffn", "mhsa", "conv"), 0.3, 0.001),
    Trial("adl-all-t0.3-a0.001-s1", "adaptive_dropout", 0.250, 0.46, ("ffn", "mhsa", "conv"), 0.3, 0.001, seed=1),
    Trial("adl-ffn-t0.3-a0.001-s0", "adaptive_dropout", 0.220, 0.30, ("ffn",), 0.3, 0.001),
    Trial("adl-ffn-t0.3-a0.001-s1", "adaptive_dropout", 0.226, 0.28, ("ffn",), 0.3, 0.001, seed=1),
    Trial("adl-mhsa+conv-t0.3-a0.001-s0", "adaptive_dropout", 0.230, 0.20, ("mhsa", "conv"), 0.3, 0.001),
    Trial("adl-all-t1-a0.001-s0", "adaptive_dropout", 0.270, 0.55, ("ffn", "mhsa", "conv"), 1.0, 0.001),
    Trial("adl-all-t0.3-a0.01-s0", "adaptive_dropout", 0.300, 0.65, ("ffn", "mhsa", "conv"), 0.3, 0.01),
    Trial("magnitude_structured-s0", "magnitude_structured", 0.280, 0.48, budget=BUDGET),
    Trial("magnitude_unstructured-s0", "magnitude_unstructured", 0.260, 0.48, budget=BUDGET),
    Trial("small_dense-s0", "small_dense", 0.290, 0.48, budget=BUDGET),
    Trial("adl-ffn+conv-t0.3-a0.001-s0", "adaptive_dropout", 0.9, 0.0, ("ffn", "conv"), 0.3, 0.001,
          status="FAILED", extra_tags={"failure_reason": "FloatingPointError: loss is NaN"}),
    Trial("adl-conv-t0.3-a0.001-s0", "adaptive_dropout", 0.9, 0.0, ("conv",), 0.3, 0.001, status="RUNNING"),
]
SOURCE_DENSE = Trial("dense-s0", "dense", 0.200, in_sweep=False)
FINISHED = [t for t in TRIALS if t.status == "FINISHED"] + [SOURCE_DENSE]


@dataclass
class Store:
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    run_ids: dict[str, str]  # trial name -> run id


def _params(trial: Trial) -> dict[str, str]:
    recipe = {"method": trial.method, "train": {"seed": trial.seed, "epochs": EPOCHS},
              "adl": {"tau": trial.tau, "alpha": trial.alpha, "locations": list(trial.locations or ("ffn",))},
              "prune": {"target_params": trial.budget} if trial.method not in ("dense", "adaptive_dropout") else {},
              "tracking": {"experiment": EXPERIMENT, "run_name": trial.name}}
    return {k: str(v) for k, v in flatten(to_dict(build(Config, recipe))).items()} | {"code_version": "abc1234"}


def _tags(trial: Trial, parent_id: str | None, source_id: str | None) -> dict[str, str]:
    tags = {"method": trial.method, "seed": str(trial.seed), "recipe_key": "tiny",
            "locations": "+".join(trial.locations) or "none", "mlflow.runName": trial.name, **trial.extra_tags}
    if parent_id:
        tags |= {"mlflow.parentRunId": parent_id, "sweep.role": "trial", "optuna.study_name": EXPERIMENT,
                 "optuna.trial_number": "0", "grid_point": json.dumps({"arm": trial.method, "adl.tau": trial.tau, "train.seed": trial.seed})}
    if trial.budget:
        tags |= {"budget.target_params": str(trial.budget), "source_dense_run_id": source_id or ""}
    return tags


def _metrics(trial: Trial, epochs: int) -> list[Metric]:
    """Per-epoch curves, then (for a finished trial) the final metrics at step = epochs."""
    rows = []
    for epoch in range(1, epochs + 1):
        progress = epoch / EPOCHS
        rows += [("train/loss", 3.0 - 2.0 * progress, epoch), ("dev/wer", trial.test_wer + 0.3 * (1 - progress), epoch)]
        for loc in trial.locations:
            rows.append((f"adl/kept_fraction/{loc}", 1.0 - trial.reduction * min(1.0, 1.4 * progress), epoch))
    if trial.status == "FINISHED":
        r = trial.reduction
        rows += [(key, value, EPOCHS) for key, value in {
            "dev/wer": trial.test_wer - 0.01, "dev/cer": trial.test_wer / 3, "test/wer": trial.test_wer,
            "test/cer": trial.test_wer / 3, "params/total": trial.params, "params/encoder": trial.params - 50_000,
            "params/dense_total": DENSE_PARAMS, "params/reduction": r,
            "flops/encoder_10s": DENSE_FLOPS * (1 - 0.9 * r), "flops/dense_encoder_10s": DENSE_FLOPS,
            "latency/ms_b1_10s": DENSE_LATENCY * (1 - 0.5 * r), "latency/dense_ms_b1_10s": DENSE_LATENCY,
            "time/train_s": 60.0}.items()]
    return [Metric(key, float(value), 1_700_000_000_000 + i, step) for i, (key, value, step) in enumerate(rows)]


def _retention(trial: Trial) -> dict[str, list[float]]:
    """Bimodal retention probabilities: the kept fraction of units near 1, the rest near 0."""
    rng = np.random.default_rng(trial.seed + len(trial.locations))
    sizes = {"ffn": 256, "mhsa": 8, "conv": 128}
    out = {}
    for loc in trial.locations:
        kept = round(sizes[loc] * (1 - trial.reduction))
        p = np.concatenate([rng.uniform(0.8, 1.0, kept), rng.uniform(0.0, 0.2, sizes[loc] - kept)])
        out[loc] = [round(float(v), 4) for v in p]
    return out


TEST_UTTERANCES = 200


def utterance_errors(trial: Trial) -> dict[str, list]:
    """Per test utterance (the same ids for every trial): word edits spread at random so that their
    total over the words gives the trial's test WER (to rounding)."""
    words = np.random.default_rng(0).integers(4, 16, TEST_UTTERANCES)
    rng = np.random.default_rng(zlib.crc32(trial.name.encode()))
    errors = rng.multinomial(round(trial.test_wer * words.sum()), words / words.sum())
    return {"ids": [f"utt{i}" for i in range(TEST_UTTERANCES)], "errors": errors.tolist(), "words": words.tolist()}


def _log_trial(client: MlflowClient, experiment_id: str, trial: Trial, parent_id: str | None,
               source_id: str | None) -> str:
    run = client.create_run(experiment_id, run_name=trial.name, tags=_tags(trial, parent_id, source_id))
    run_id = run.info.run_id
    params = [Param(k, v) for k, v in _params(trial).items()]
    for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run_id, params=params[start:start + 100])
    client.log_batch(run_id, metrics=_metrics(trial, EPOCHS if trial.status != "RUNNING" else 1),
                     tags=[RunTag("mlflow.source.name", "sweep.py")])
    if trial.status != "RUNNING":
        client.log_text(run_id, f'method = "{trial.method}"\n', "config.toml")
        if trial.method == "adaptive_dropout" and trial.status == "FINISHED":
            client.log_dict(run_id, _retention(trial), "retention.json")
        if trial.status == "FINISHED":
            client.log_dict(run_id, utterance_errors(trial), "test_utterance_errors.json")
        client.set_terminated(run_id, status=trial.status)
    return run_id


def build_store(root: Path) -> Store:
    """Writes the store under root (root/mlflow.db and root/artifacts) and returns its ids."""
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri)
    experiment_id = ensure_experiment(tracking_uri, EXPERIMENT)  # as sweep.py makes it: artifacts in root/artifacts
    run_ids = {SOURCE_DENSE.name: _log_trial(client, experiment_id, SOURCE_DENSE, None, None)}
    parent = client.create_run(experiment_id, run_name=PARENT_NAME, tags={"sweep.role": "parent"})
    parent_id = parent.info.run_id
    client.log_text(parent_id, '[sweep]\nmethods = ["dense", "adaptive_dropout"]\n', "ablation.toml")
    for trial in TRIALS:
        run_ids[trial.name] = _log_trial(client, experiment_id, trial, parent_id, run_ids[SOURCE_DENSE.name])
    client.set_terminated(parent_id)
    client.create_run(experiment_id, run_name="notes")  # not a trial: no role, no method; ignored

    broken_id = client.create_experiment(BROKEN, artifact_location=(root / "artifacts-broken").as_uri())
    broken_parent = client.create_run(broken_id, run_name=PARENT_NAME, tags={"sweep.role": "parent"}).info.run_id
    _log_trial(client, broken_id, TRIALS[-2], broken_parent, None)
    return Store(tracking_uri, experiment_id, parent_id, run_ids)
