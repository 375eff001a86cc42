"""How a trial's MLflow run records what it is: its configuration, recipe key, name and tags."""
from __future__ import annotations

import subprocess
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST, ErrorCode

from study.config import Config, flatten, to_dict
from study.tracking.code_identity import LOADED_PACKAGE_HASH, recipe_key
from study.tracking.provenance import environment_tags
from study.tracking.store import ensure_experiment
from study.names import STRUCTURED, TAG_FAILURE_REASON, TAG_LOCATIONS, TAG_METHOD, TAG_ROLE, TAG_SEED, TAG_TRIAL_KEY


def code_version() -> str:
    """The git commit of the code, with '+dirty' when the tree has changes; 'unknown' outside git."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def run_params(cfg: Config) -> dict[str, str]:
    """Every resolved configuration key, flattened, plus the method and the code version."""
    params = {key: str(value) for key, value in flatten(to_dict(cfg)).items()}
    params["code_version"] = code_version()
    return params


def _short(value: float) -> str:
    return f"{value:g}".replace("e-0", "e-")


def run_label(cfg: Config) -> str:
    """A run name that says what the trial is, e.g. adl-ffn+mhsa-tau0.3-alpha1e-3-s1."""
    seed = f"s{cfg.train.seed}"
    if cfg.method == "adaptive_dropout":  # the controller replaces alpha: its target names the run
        push = (f"budget{_short(cfg.adl.target_reduction)}" + ("-expected" if cfg.adl.target_measure == "expected" else "")
                if cfg.adl.target_reduction else f"alpha{_short(cfg.adl.alpha)}")
        if cfg.adl.init == "dense":  # from the trained model: its pruning epochs and teacher weight
            push += (f"-from-dense-k{cfg.adl.pruning_epochs}" + (f"-kd{_short(cfg.adl.distill)}" if cfg.adl.distill else "")
                     + (f"-kdh{_short(cfg.adl.distill_hidden)}" if cfg.adl.distill_hidden else ""))
        if cfg.adl.finetune_epochs:
            push += f"-ft{cfg.adl.finetune_epochs}"
        return f"adl-{location_label(cfg)}-tau{_short(cfg.adl.tau)}-{push}-{seed}"
    if cfg.method == "retrain_pruned":  # named by its source run (an id) or model file
        return f"retrain-{Path(cfg.prune.source_run.removeprefix('runs:/').split('/')[0]).stem[:8]}-{seed}"
    budget = (f"p{cfg.prune.target_params}" if cfg.prune.target_params
              else f"r{_short(cfg.prune.target_reduction)}")
    finetune = f"-ft{cfg.prune.finetune_epochs}" if cfg.prune.finetune_epochs else ""
    if cfg.prune.distill and cfg.prune.finetune_epochs:
        finetune += f"-kd{_short(cfg.prune.distill)}"
    if cfg.prune.distill_hidden and cfg.prune.finetune_epochs:
        finetune += f"-kdh{_short(cfg.prune.distill_hidden)}"
    if cfg.method in STRUCTURED and cfg.prune.ranking != "global":
        finetune += f"-{cfg.prune.ranking}"
    prefix = {"dense": "dense", "magnitude_structured": "mag-struct", "magnitude_unstructured": "mag-unstruct",
              "activation_structured": "act-struct", "taylor_structured": "taylor-struct",
              "small_dense": "small-dense"}[cfg.method]
    return f"{prefix}-{seed}" if cfg.method == "dense" else f"{prefix}-{budget}{finetune}-{seed}"


def location_label(cfg: Config) -> str:
    return "+".join(cfg.adl.locations) if cfg.method == "adaptive_dropout" else "none"


def start_run(tracking_uri: str, cfg: Config, run_id: str | None = None,
              tags: dict[str, str] | None = None) -> mlflow.ActiveRun:
    """Starts (or, with run_id, resumes) the MLflow run of one trial. `tags` may hold
    mlflow.parentRunId to nest the run under its sweep."""
    mlflow.set_tracking_uri(tracking_uri)
    if run_id is not None:  # resuming: the tags of this attempt (e.g. its Optuna trial) replace the old
        run = mlflow.start_run(run_id=run_id)
        if tags:
            mlflow.set_tags(tags)
        return run
    ensure_experiment(tracking_uri, cfg.tracking.experiment)
    all_tags = {TAG_METHOD: cfg.method, TAG_SEED: str(cfg.train.seed), TAG_LOCATIONS: location_label(cfg),
                "recipe_key": recipe_key(cfg), TAG_ROLE: "trial", **environment_tags(LOADED_PACKAGE_HASH), **(tags or {})}
    run = mlflow.start_run(run_name=cfg.tracking.run_name or run_label(cfg), tags=all_tags)
    mlflow.log_params(run_params(cfg))
    return run


def close_run(client: mlflow.MlflowClient, run_id: str, reason: str, status: str = "FAILED") -> None:
    """Ends a run that nothing will resume, saying why (its `failure_reason` tag)."""
    client.set_tag(run_id, TAG_FAILURE_REASON, reason)
    client.set_terminated(run_id, status=status)


def close_orphaned_runs(tracking_uri: str, experiment: str, key: str, keep: str | None) -> None:
    """Closes the RUNNING runs of trial `key` other than `keep` (the run its folder recorded, to resume).
    Such a run's attempt was stopped (SIGKILL, a lost machine) between creating the run
    and recording it, so no later attempt resumes or closes it. Called under the trial's lock before a new
    attempt starts its run: no live process is then between those two steps for this trial."""
    client = mlflow.MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return
    for run in client.search_runs([found.experiment_id],
                                  f"tags.{TAG_TRIAL_KEY} = '{key}' and attributes.status = 'RUNNING'"):
        if run.info.run_id != keep:
            close_run(client, run.info.run_id,
                      "orphaned: its attempt stopped before recording it; a later attempt ran the trial")


# What a store answers for a run it does not hold: the SQL, file and REST stores say the run does not
# exist; a malformed id (a damaged record) is refused before any store is asked.
NOT_IN_STORE = {ErrorCode.Name(RESOURCE_DOES_NOT_EXIST), ErrorCode.Name(INVALID_PARAMETER_VALUE)}


def run_status(run_id: str, tracking_uri: str) -> str | None:
    """RUNNING, FINISHED, FAILED, KILLED; None when the run is not in this store. Any other error (the
    store unreachable, a database fault) is raised: read as "no such run", it would train a finished
    trial again or start a new run beside the one to resume."""
    try:
        return mlflow.MlflowClient(tracking_uri).get_run(run_id).info.status
    except MlflowException as exc:
        if exc.error_code in NOT_IN_STORE:
            return None
        raise
