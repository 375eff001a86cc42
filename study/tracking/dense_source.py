"""The trained dense model that magnitude pruning starts from: found in MLflow by its recipe.

A sweep trains each dense baseline once; every magnitude-pruning trial of the same recipe (data,
features, model, training and the code that trains it; see `mlflow_runs.recipe_key`) reuses its
exported model.pt.
"""
from __future__ import annotations

import dataclasses

import mlflow

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


def load_dense_model(run_id: str, tracking_uri: str) -> ConformerCTC:
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="model.pt", tracking_uri=tracking_uri)
    model, _ = load_model(path)
    return model
