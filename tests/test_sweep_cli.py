"""sweep.py: bad input is refused with a clear message before any work starts."""
from __future__ import annotations

import sweep


def test_unknown_key_exits_2_naming_file_and_key(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nepoch = 3\n")
    assert sweep.main([str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.toml" in err and "train.epoch" in err


def test_bad_override_and_missing_data_root(tmp_path, capsys):
    assert sweep.main(["experiments/default.toml", "--set", "model.dropout=2.0"]) == 2
    assert "model.dropout" in capsys.readouterr().err
    missing = tmp_path / "nowhere"
    assert sweep.main(["experiments/fsdd.toml", "--set", f"data.root={missing}",
                       "--set", f"data.cache_dir={tmp_path}"]) == 2
    assert str(missing) in capsys.readouterr().err


def test_expected_measure_with_hard_concrete_gates_exits_2_naming_both_keys(tmp_path, capsys):
    """The expected measure counts a hard concrete unit by P(z > 0); pruning keeps it by its evaluation gate."""
    bad = tmp_path / "budget.toml"
    bad.write_text('method = "adaptive_dropout"\n[adl]\ngate = "hard_concrete"\ntarget_reduction = 0.5\n'
                   'target_measure = "expected"\n')
    assert sweep.main([str(bad)]) == 2
    err = capsys.readouterr().err
    assert "budget.toml" in err and "adl.target_measure" in err and "adl.gate" in err


def test_overrides_parse_toml_values():
    assert sweep.parse_overrides(["a.b=3", "c=1e-3", "d=[\"ffn\", \"conv\"]", "e=word", "f=true"]) == {
        "a.b": 3, "c": 1e-3, "d": ["ffn", "conv"], "e": "word", "f": True}


def test_a_voice_the_installed_espeak_lacks_exits_2_before_any_synthesis(tmp_path, capsys):
    assert sweep.main(["experiments/default.toml", "--set", 'data.synthetic.dev_variants=["m2", "m99"]',
                       "--set", f"data.cache_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "experiments/default.toml" in err and "data.synthetic.dev_variants" in err and "m99" in err
    assert not list(tmp_path.rglob("*.flac"))
