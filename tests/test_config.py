"""Configuration: TOML into typed dataclasses, and every bad key or value named with its file."""
from __future__ import annotations

from pathlib import Path

import pytest

from study.config import (
    Config,
    ConfigError,
    build,
    dumps_toml,
    flatten,
    load_config,
    to_dict,
)

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "exp.toml"
    path.write_text(body)
    return path


def test_defaults_and_values_load(tmp_path):
    cfg = load_config(write(tmp_path, "[model]\nd_model = 96\nnum_heads = 4\n[train]\nlr = 1\n"))
    assert cfg.model.d_model == 96 and cfg.model.ffn_dim == Config().model.ffn_dim
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)  # int accepted where float is due
    assert cfg.tracking.experiment == "exp"  # defaults to the file's stem


@pytest.mark.parametrize("body, key", [
    ("[model]\nd_modle = 96\n", "model.d_modle"),
    ("bogus = 1\n", "bogus"),
    ("[data.synthetic]\ntrain_utterance = 5\n", "data.synthetic.train_utterance"),
])
def test_unknown_key_is_rejected_with_its_name_and_file(tmp_path, body, key):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, body))
    assert key in str(err.value) and "exp.toml" in str(err.value) and "unknown key" in str(err.value)


@pytest.mark.parametrize("body, key, words", [
    ('[model]\nd_model = "big"\n', "model.d_model", "expected int"),
    ("[model]\nd_model = true\n", "model.d_model", "expected int"),
    ("[model]\ndropout = 1.5\n", "model.dropout", "<= 0.9"),
    ("[train]\nepochs = 0\n", "train.epochs", ">= 1"),
    ('method = "magic"\n', "method", "one of"),
    ('[data]\nsource = "timit"\n', "data.source", "one of"),
    ("[model]\nd_model = 100\nnum_heads = 3\n", "model.d_model", "divisible"),
    ('[data]\ntrain_subsets = "train-clean-100"\n', "data.train_subsets", "list"),
    ("[features]\nspeed_perturb = [0.9, 3.0]\n", "features.speed_perturb", "<= 2.0"),
    ('[model]\nfront_end = "conv1d"\nsubsampling = 4\n', "model.front_end", "subsampling = 8"),
    ('[adl]\nrescale = "inverted"\n', "adl.inference", "adl.rescale"),
])
def test_bad_values_are_rejected_naming_the_key(tmp_path, body, key, words):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, body))
    assert key in str(err.value) and words in str(err.value) and "exp.toml" in str(err.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[model\n"))


def test_overrides_apply_and_are_checked(tmp_path):
    path = write(tmp_path, "")
    assert load_config(path, {"train.epochs": 3}).train.epochs == 3
    with pytest.raises(ConfigError, match="train.epoch"):
        load_config(path, {"train.epoch": 3})


def test_resolved_config_round_trips_through_toml(tmp_path):
    cfg = load_config(write(tmp_path, "[model]\nd_model = 64\n[data.synthetic]\ntrain_utterances = 7\n"))
    again = build(Config, __import__("tomllib").loads(dumps_toml(to_dict(cfg))))
    assert again == cfg
    assert flatten(to_dict(cfg))["model.d_model"] == 64


def test_shipped_experiment_files_load_with_every_point():
    from study.evaluation.accounting import count_params
    from study.model import ConformerCTC
    from study.sweep.experiment_file import load_experiment
    sizes = {}
    for path in sorted((REPO / "experiments").glob("*.toml")):
        experiment = load_experiment(path)  # builds the Config of every grid point
        assert experiment.points(), path
        sizes[path.stem] = len(experiment.points())
    assert sizes["default"] == 5 and sizes["ablation"] == 32 and sizes["ablation_full"] == 162
    ablation = load_experiment(REPO / "experiments" / "ablation_full.toml")
    subsets = {tuple(ablation.config(p).adl.locations) for p in ablation.points() if ablation.config(p).method == "adaptive_dropout"}
    assert len(subsets) == 8  # every subset of {ffn, mhsa, conv}, the empty one included
    librispeech = load_experiment(REPO / "experiments" / "librispeech.toml").config()
    assert librispeech.data.source == "librispeech" and librispeech.train.device == "cuda"
    assert 10e6 <= count_params(ConformerCTC(librispeech.model, librispeech.features.n_mels, 29)) <= 30e6


def test_command_line_overrides_are_part_of_every_point_and_win():
    from study.sweep.experiment_file import load_experiment
    path = REPO / "experiments" / "default.toml"
    plain = load_experiment(path)
    changed = load_experiment(path, {"train.epochs": 2, "method": "dense"})
    assert {p.key for p in plain.points()}.isdisjoint(p.key for p in changed.points())  # not "already done"
    assert {changed.config(p).method for p in changed.points()} == {"dense"}  # --set beats an arm's set
    assert all(changed.config(p).train.epochs == 2 for p in changed.points())


def test_an_experiment_extends_another_files_configuration_not_its_sweep(tmp_path):
    from study.sweep.experiment_file import load_experiment
    (tmp_path / "base.toml").write_text('method = "dense"\n[model]\nd_model = 64\nnum_heads = 4\n[train]\nepochs = 3\n'
                                        '[tracking]\nexperiment = "base"\n'
                                        '[sweep]\ngrid = { "train.seed" = [0, 1, 2] }\n')
    child = tmp_path / "sub" / "child.toml"
    child.parent.mkdir()
    child.write_text('extends = "../base.toml"\n[train]\nepochs = 5\n[sweep]\n[[sweep.arms]]\nset = { method = "small_dense", "prune.target_reduction" = 0.5 }\n')
    experiment = load_experiment(child)
    cfg = experiment.config(experiment.points()[0])
    assert (cfg.model.d_model, cfg.model.num_heads, cfg.train.epochs) == (64, 4, 5)  # table by table; the child wins
    assert len(experiment.points()) == 1 and cfg.method == "small_dense"  # the base's grid is not inherited
    assert experiment.name == "child" and cfg.tracking.experiment == "child"
    assert experiment.sources == [child, child.parent / "../base.toml"]
    single = tmp_path / "single.toml"
    single.write_text('extends = "base.toml"\n[model]\nd_model = 32\n')
    assert (load_config(single).model.d_model, load_config(single).train.epochs) == (32, 3)  # a single trial too


@pytest.mark.parametrize("body,words", [('extends = "missing.toml"\n', "exp.toml: extends: "),
                                        ('extends = "exp.toml"\n', "a cycle"),
                                        ("extends = 3\n", "extends: expected a file name")])
def test_a_bad_extends_names_the_file_at_fault(tmp_path, body, words):
    with pytest.raises(ConfigError, match=words):
        load_config(write(tmp_path, body))
