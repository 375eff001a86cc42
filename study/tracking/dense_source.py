"""The trained dense model that magnitude pruning (and adaptive dropout with adl.init = "dense") starts
from: found in MLflow by its recipe, or named by adl.init_from.

A sweep trains each dense baseline once; every magnitude-pruning trial of the same recipe (data,
features, model, training and the code that trains it; see `mlflow_runs.recipe_key`) reuses its
exported model.pt.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import mlflow
import torch

from study.config import AdlConfig, Config, PruneConfig, TrackingConfig
from study.model import ConformerCTC
from study.model.io import load_model
from study.tracking.mlflow_runs import recipe_key


def dense_config(cfg: Config) -> Config:
    """The dense trial of the same recipe (its run lands in the same experiment)."""
    return dataclasses.replace(cfg, method="dense", adl=AdlConfig(), prune=PruneConfig(),
                               tracking=TrackingConfig(experiment=cfg.tracking.experiment))


def find_dense_run(cfg: Config, tracking_uri: str) -> str | None:
    """The latest FINISHED dense run of this recipe in any experiment of the store, or None."""
    mlflow.set_tracking_uri(tracking_uri)
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list", max_results=1,
                              filter_string=f"tags.recipe_key = '{recipe_key(cfg)}' and tags.method = 'dense' "
                                            "and attributes.status = 'FINISHED'",
                              order_by=["attributes.end_time DESC"])
    return runs[0].info.run_id if runs else None


def load_dense_model(run_id: str, tracking_uri: str, artifact: str = "model.pt") -> ConformerCTC:
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact, tracking_uri=tracking_uri)
    model, _ = load_model(path)
    return model


def load_model_from(source: str, tracking_uri: str) -> tuple[str, ConformerCTC]:
    """A model.pt this harness exported, a path or runs:/<run_id>/<artifact> in the tracking store:
    (its run id, or the path; the model)."""
    if source.startswith("runs:/"):
        run_id, _, artifact = source.removeprefix("runs:/").partition("/")
        return run_id, load_dense_model(run_id, tracking_uri, artifact or "model.pt")
    if not Path(source).is_file():
        raise FileNotFoundError(f"adl.init_from: no file {source}")
    model, _ = load_model(source)
    return source, model


def check_same_shapes(source: torch.nn.Module, target: torch.nn.Module, name: str) -> None:
    """The start model must have every tensor of the model the trial builds, shape for shape."""
    have, want = source.state_dict(), target.state_dict()
    for key, tensor in want.items():
        if key not in have or have[key].shape != tensor.shape:
            found = tuple(have[key].shape) if key in have else "no such tensor"
            raise ValueError(f"the dense model {name} does not fit this trial's configuration: {key} is "
                             f"{found} there, {tuple(tensor.shape)} here (model.* and the output units must match)")
