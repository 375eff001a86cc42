"""retrain_pruned: the architecture a pruned run found, trained from a fresh initialisation (the control
that tells the value of the pruned weights from the value of the widths). Its source must be a model
pruned from the trial's own model settings; its end to end run is in test_sweep's matched-arm test."""
from __future__ import annotations

import dataclasses

import mlflow
import pytest
import torch

from study.config import Config, build
from study.model import BlockWidths
from study.model.io import load_model, save_model
from study.tracking.dense_source import load_architecture
from study.trial import run_trial
from study.trial_context import build_model
from tests.helpers import TINY_RECIPE

UNEQUAL = [BlockWidths(ffn1=40, ffn2=24, query_dims=[16, 5], value_dims=[16, 9], conv=20)]  # one block, pruned


def test_the_method_and_its_source_come_together():
    with pytest.raises(Exception, match="prune.source_run"):
        build(Config, {**TINY_RECIPE, "method": "retrain_pruned"})
    with pytest.raises(Exception, match="method is 'dense', prune.source_run is 'model.pt'"):
        build(Config, {**TINY_RECIPE, "prune": {"source_run": "model.pt"}})


def test_a_pruned_model_file_gives_its_widths(tiny_config, tmp_path):
    path = tmp_path / "pruned.pt"
    save_model(path, tiny_config.model, build_model(tiny_config, 12, widths=UNEQUAL), UNEQUAL)
    name, widths = load_architecture(str(path), "sqlite:///unused.db", tiny_config.model, tiny_config.features.n_mels, 12)
    assert name == str(path) and widths == UNEQUAL


def test_a_source_pruned_from_other_model_settings_is_refused_naming_both(tiny_config, tracking_uri, tmp_path):
    wider = build(Config, {**TINY_RECIPE, "model": {**TINY_RECIPE["model"], "ffn_dim": 96}})
    path = tmp_path / "other.pt"
    save_model(path, wider.model, build_model(wider, 12, widths=UNEQUAL), UNEQUAL)
    cfg = dataclasses.replace(tiny_config, method="retrain_pruned",
                              prune=dataclasses.replace(tiny_config.prune, source_run=str(path)))
    with pytest.raises(ValueError, match=r"was not pruned from this trial's model: model.ffn_dim = 64 here, 96 there"):
        run_trial(cfg, tracking_uri, runs_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="prune.source_run: no file nowhere.pt"):
        load_architecture("nowhere.pt", tracking_uri, tiny_config.model, tiny_config.features.n_mels, 12)


def _output_units(cfg: Config) -> int:
    from study.data.prepared import prepare_data
    from study.data.tokenizer import build_tokenizer
    train = prepare_data(cfg)["train"]
    return build_tokenizer(cfg.text, train.transcripts, cfg.data.cache_dir).vocab_size


def test_the_retrained_model_has_the_source_widths_and_fresh_weights(tiny_config, tracking_uri, tmp_path):
    path, units = tmp_path / "pruned.pt", _output_units(tiny_config)
    cfg = dataclasses.replace(tiny_config, method="retrain_pruned",
                              prune=dataclasses.replace(tiny_config.prune, source_run=str(path)))
    cfg.train.epochs = 1
    save_model(path, cfg.model, build_model(cfg, units + 1, widths=UNEQUAL), UNEQUAL)
    with pytest.raises(ValueError, match=f"output units = {units} here, {units + 1} there"):
        run_trial(cfg, tracking_uri, runs_dir=tmp_path)

    source = build_model(cfg, units, widths=UNEQUAL)
    torch.nn.init.zeros_(source.encoder.blocks[0].ffn1.w1.weight)  # weights that training from scratch would not give
    save_model(path, cfg.model, source, UNEQUAL)
    result = run_trial(cfg, tracking_uri, runs_dir=tmp_path)
    run = mlflow.MlflowClient(tracking_uri).get_run(result.run_id)
    assert run.data.tags["source_pruned_run_id"] == str(path) and run.data.metrics["train/epochs_total"] == 1
    local = mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path="model.pt", tracking_uri=tracking_uri)
    model, saved = load_model(local)
    assert [BlockWidths(**w) for w in saved["widths"]] == UNEQUAL
    assert model.encoder.blocks[0].ffn1.w1.weight.shape == (40, 32)  # (ffn1, d_model)
    assert model.encoder.blocks[0].ffn1.w1.weight.abs().sum() > 0  # initialised and trained, not copied
