"""python -m study.unit_plan: each structured baseline's one-shot plan for a saved dense model, per block and
group, at the experiment's budget, from the experiment's calibration sample; no training, nothing logged."""
from __future__ import annotations

import pytest

from study.data.prepared import prepare_data
from study.data.tokenizer import build_tokenizer
from study.method import baselines
from study.model import dense_widths
from study.model.io import save_model
from study.sweep.experiment_file import load_experiment
from study.trial_context import build_model
from study import unit_plan
from tests.helpers import write_experiment


TWO_BLOCKS = {"model.num_blocks": 2}


@pytest.fixture
def saved_dense(tmp_path, corpus_cache):
    """A tiny experiment (2 blocks) and a dense model of its recipe saved as a trial saves one."""
    exp = write_experiment(tmp_path, corpus_cache, "")
    cfg = load_experiment(exp).config(extra=TWO_BLOCKS)
    data = prepare_data(cfg)
    tokenizer = build_tokenizer(cfg.text, data["train"].transcripts, cfg.data.cache_dir)
    model = build_model(cfg, tokenizer.vocab_size)
    save_model(tmp_path / "model.pt", cfg.model, model, dense_widths(cfg.model), {"tokenizer": tokenizer.state()})
    return exp, tmp_path / "model.pt", model, cfg


def test_each_baseline_plan_is_printed_per_block_and_group(saved_dense, capsys):
    exp, path, model, cfg = saved_dense
    assert unit_plan.main([str(exp), str(path), "--reduction", "0.4", "--set", "model.num_blocks=2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["method", "block", "ffn1", "ffn2", "query", "value", "conv"]
    rows = [line.split() for line in lines[1:]]
    assert [(r[0], r[1]) for r in rows] == [(m, b) for m in ("magnitude_structured", "activation_structured",
                                                             "taylor_structured") for b in ("0", "1")]
    assert all(0.0 <= float(v) <= 1.0 for r in rows for v in r[2:])
    target = round(baselines.analytic_params(cfg.model, dense_widths(cfg.model), model.n_mels,
                                             model.head.out_features)["total"] * 0.6)
    magnitude = unit_plan.kept_shares(baselines.structured_plan(model.eval(), cfg.model, target))
    assert [[float(v) for v in r[2:]] for r in rows[:2]] == [
        [pytest.approx(round(block[g], 2), abs=0.006) for g in ("ffn1", "ffn2", "query", "value", "conv")]
        for block in magnitude]  # the weight norms' plan, as a magnitude trial would prune
    assert rows[2:4] != rows[0:2] and rows[4:6] != rows[0:2]  # the calibrated scores rank otherwise


def test_a_missing_model_file_is_named(saved_dense, capsys):
    exp, path, _, _ = saved_dense
    with pytest.raises(SystemExit):
        unit_plan.main([str(exp), str(path.with_name("absent.pt"))])
    assert "absent.pt: no such model file" in capsys.readouterr().err
