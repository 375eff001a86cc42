"""sweep.py: bad input is refused with a clear message before any work starts."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

import sweep

REPO = Path(__file__).resolve().parents[1]


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


@pytest.mark.parametrize("options, setting, message", [
    (["--workers", "0"], None, "--workers must be at least 1, got 0"),
    (["--hang-minutes", "-1"], None, "--hang-minutes must be 0 (never) or more, got -1.0"),
    (["--detach"], None, "--detach leaves SLURM jobs running: it needs --launcher slurm"),
    (["--launcher", "slurm"], "no submitit", "--launcher slurm needs submitit"),
    (["--launcher", "slurm"], "no sbatch", "--launcher slurm: no sbatch on this machine's PATH"),
    (["--launcher", "slurm", "--slurm", "partitoin=gpu"], None, "partitoin"),
    (["--launcher", "slurm", "--slurm", "nodes_per_worker=2", "--set", "train.processes=3"], None,
     "train.processes = 3 does not split evenly over nodes_per_worker = 2"),
])
def test_command_line_refusals_exit_2_before_any_work(options, setting, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # nothing may be written: no runs/ appears
    if setting == "no submitit":
        monkeypatch.setitem(sys.modules, "submitit", None)  # what find_spec answers when it is not installed
    if setting == "no sbatch":
        monkeypatch.setenv("PATH", str(tmp_path))
    assert sweep.main([str(REPO / "experiments/default.toml"), *options]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_check_says_the_environment_is_the_pinned_one(capsys):
    assert sweep.main(["--check"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("environment ok: torch ") and "torchaudio " in out
