"""The trained dense model that magnitude pruning (and adaptive dropout with adl.init = "dense") starts
from: found in MLflow by its recipe, or named by prune.dense_from (adl.init_from); and the pruned
architecture that retrain_pruned trains (prune.source_run).

A sweep trains each dense baseline once; every magnitude-pruning trial of the same recipe (data,
features, model, training and the code that trains it; see `code_identity.recipe_key`) reuses its
exported model.pt.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import mlflow
import torch

from study.config import AdlConfig, Config, ModelConfig, PruneConfig, TrackingConfig
from study.model import BlockWidths, ConformerCTC
from study.model.io import load_model, saved_shapes
from study.names import TAG_METHOD
from study.tracking.code_identity import recipe_key


def dense_config(cfg: Config) -> Config:
    """The dense trial of the same recipe (its run lands in the same experiment)."""
    return dataclasses.replace(cfg, method="dense", adl=AdlConfig(), prune=PruneConfig(),
                               tracking=TrackingConfig(experiment=cfg.tracking.experiment))


def find_dense_run(cfg: Config, tracking_uri: str) -> str | None:
    """The latest FINISHED dense run of this recipe in any experiment of the store, or None."""
    mlflow.set_tracking_uri(tracking_uri)
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list", max_results=1,
                              filter_string=f"tags.recipe_key = '{recipe_key(cfg)}' and tags.{TAG_METHOD} = 'dense' "
                                            "and attributes.status = 'FINISHED'",
                              order_by=["attributes.end_time DESC"])
    return runs[0].info.run_id if runs else None


def load_dense_model(run_id: str, tracking_uri: str) -> ConformerCTC:
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="model.pt", tracking_uri=tracking_uri)
    model, _ = load_model(path)
    return model


def model_file(source: str, tracking_uri: str) -> tuple[str, str]:
    """A model.pt this harness exported, named as a path, runs:/<run_id>/<artifact> or a bare run id (its
    model.pt): (the run id, or the path; the local file)."""
    if Path(source).is_file():
        return source, source
    if source.startswith("runs:/"):
        run_id, _, artifact = source.removeprefix("runs:/").partition("/")
    elif re.fullmatch(r"[0-9a-f]{32}", source):
        run_id, artifact = source, ""
    else:
        raise FileNotFoundError(f"no file {source} (nor a run id or runs:/<run_id>/model.pt)")
    return run_id, mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact or "model.pt",
                                                        tracking_uri=tracking_uri)


def load_model_from(source: str, tracking_uri: str, knob: str, tokenizer_state: dict) -> tuple[str, ConformerCTC]:
    """The dense model a knob (prune.dense_from, adl.init_from) names: (its run id, or the path; the model).
    A model of other output units than the trial's (`tokenizer_state`) is refused."""
    try:
        name, path = model_file(source, tracking_uri)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{knob}: {exc}") from None
    model, saved = load_model(path)
    check_same_units(saved.get("tokenizer"), tokenizer_state, f"{knob} {source}")
    return name, model


def check_same_units(theirs: dict | None, mine: dict, name: str) -> None:
    """Output class i must be the same unit in both models, or pruning keeps weights that mean other units
    (a file without a tokenizer predates BPE: characters)."""
    theirs = theirs or {"units": "char"}
    if theirs["units"] != mine["units"]:
        raise ValueError(f"{name} has other output units: {theirs['units']} there, {mine['units']} here (text.units)")
    if mine["units"] == "bpe" and not torch.equal(theirs["model"], mine["model"]):
        raise ValueError(f"{name} has other output units: BPE models trained on other transcripts or with another "
                         "bpe_vocab_size")


def load_architecture(source: str, tracking_uri: str, cfg: ModelConfig, n_mels: int,
                      vocab_size: int) -> tuple[str, list[BlockWidths]]:
    """prune.source_run's widths (the weights are not read): (its run id, or the path; the widths). Its model
    settings other than the widths, its features and output units must be the trial's, or the retrained
    model would differ in more than its widths."""
    try:
        name, path = model_file(source, tracking_uri)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"prune.source_run: {exc}") from None
    saved = torch.load(path, map_location="cpu", weights_only=True)
    their_cfg, widths = saved_shapes(saved)

    def described(model_cfg: ModelConfig, mels: int, units: int) -> dict:
        return {**{f"model.{k}": v for k, v in dataclasses.asdict(model_cfg).items()}, "features.n_mels": mels,
                "output units": units}
    mine, theirs = described(cfg, n_mels, vocab_size), described(their_cfg, saved["n_mels"], saved["vocab_size"])
    differ = {k: (v, theirs[k]) for k, v in mine.items() if theirs[k] != v}
    if differ:
        listed = ", ".join(f"{k} = {here!r} here, {there!r} there" for k, (here, there) in differ.items())
        raise ValueError(f"prune.source_run {source} was not pruned from this trial's model: {listed}")
    return name, widths


def check_same_shapes(source: torch.nn.Module, target: torch.nn.Module, name: str) -> None:
    """The start model must have every tensor of the model the trial builds, shape for shape."""
    have, want = source.state_dict(), target.state_dict()
    for key, tensor in want.items():
        if key not in have or have[key].shape != tensor.shape:
            found = tuple(have[key].shape) if key in have else "no such tensor"
            raise ValueError(f"the dense model {name} does not fit this trial's configuration: {key} is "
                             f"{found} there, {tuple(tensor.shape)} here (model.* and the output units must match)")
