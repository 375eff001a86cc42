"""A size no method can reach is refused when the experiment file is read: the largest reduction comes
from the parameter accounting, checked here against models built with every prunable unit gone."""
from __future__ import annotations

import dataclasses

import pytest

import sweep
from study.config import Config, ConfigError, build
from study.method.baselines import weight_matrices
from study.method.reachable import NO_UNITS, output_classes, smallest_model
from study.model.conformer import ConformerCTC, dense_widths
from study.sweep.experiment_file import load_experiment


@pytest.mark.parametrize("method, locations", [("adaptive_dropout", ["ffn", "mhsa", "conv"]),
                                               ("adaptive_dropout", ["mhsa"]), ("magnitude_structured", [])])
def test_the_smallest_model_is_the_one_left_when_every_prunable_unit_is_gone(method, locations):
    cfg = build(Config, {"method": method, "adl": {"locations": locations}, "prune": {"target_reduction": 0.5}})
    prunable = locations or ["ffn", "mhsa", "conv"]
    gone = {key: value for location in prunable for key, value in NO_UNITS[location].items()}
    model = ConformerCTC(cfg.model, cfg.features.n_mels, output_classes(cfg),
                         [dataclasses.replace(w, **gone) for w in dense_widths(cfg.model)])
    assert smallest_model(cfg)[0] == sum(p.numel() for p in model.parameters())


def test_unstructured_pruning_keeps_only_biases_and_norms():
    cfg = build(Config, {"method": "magnitude_unstructured", "prune": {"target_reduction": 0.5}})
    model = ConformerCTC(cfg.model, cfg.features.n_mels, output_classes(cfg))
    weights = sum(m.weight.numel() for m, _ in weight_matrices(model))
    assert smallest_model(cfg)[0] == sum(p.numel() for p in model.parameters()) - weights


def write(tmp_path, arm: str):
    path = tmp_path / "impossible.toml"
    path.write_text(f'[sweep]\nmode = "grid"\n\n[[sweep.arms]]\nname = "dense"\nset = {{ method = "dense" }}\n\n'
                    f'[[sweep.arms]]\nname = "too-far"\nset = {arm}\n')
    return path


def test_a_target_beyond_reach_is_refused_naming_it_the_maximum_and_what_cannot_go(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, '{ method = "adaptive_dropout", "adl.locations" = ["ffn"], "adl.target_reduction" = 0.7 }')
    with pytest.raises(ConfigError, match=r"arm 'too-far'.*asked for 70\.0% fewer parameters, but at most 54\.2% can "
                                          r"go: .*front end 220,000, .*mhsa 149,760, conv 119,424"):
        load_experiment(path)
    assert sweep.main([str(path), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]) == 2  # before any trial
    assert "at most 54.2% can go" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    structured = write(tmp_path, '{ method = "magnitude_structured", "prune.target_reduction" = 0.8 }')
    with pytest.raises(ConfigError, match=r"'magnitude_structured' asked for 80\.0% fewer parameters, but at most 78\.6%"):
        load_experiment(structured)
    reachable = write(tmp_path, '{ method = "magnitude_structured", "prune.target_reduction" = 0.7 }')
    assert len(load_experiment(reachable).points()) == 2
