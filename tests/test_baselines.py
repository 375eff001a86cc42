"""Baselines (docs/methods.md, Baselines): structured and unstructured magnitude pruning, small dense models."""
from __future__ import annotations

import mlflow
import pytest
import torch
from torch import nn

from study.config import Config, ConfigError, ModelConfig, build
from study.data.prepared import prepare_data
from study.data.tokenizer import tokenizer_from_state
from study.evaluation.accounting import count_params
from study.evaluation.error_rates import error_rates
from study.method import baselines
from study.method.attach import gate_seam
from study.method.pruning import GROUPS, prune
from study.model.conformer import ConformerCTC
from study.model.io import load_model
from study.model.size import analytic_params
from study.training import batch_frames
from study.trial import run_trial

CFG = ModelConfig(d_model=32, num_heads=2, ffn_dim=48, conv_channels=24, conv_kernel=5, num_blocks=2,
                  subsampling_channels=8)


def trained_like_model() -> ConformerCTC:
    """A small model with varied weights and non-trivial BatchNorm statistics."""
    torch.manual_seed(0)
    model = ConformerCTC(CFG, 40, 29)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(torch.empty_like(p).uniform_(0.2, 2.0))
        for block in model.encoder.blocks:
            block.conv.batch_norm.running_mean.uniform_(-0.5, 0.5)
            block.conv.batch_norm.running_var.uniform_(0.5, 2.0)
    return model.eval()


class FixedMask(nn.Module):
    def __init__(self, keep: torch.Tensor):
        super().__init__()
        self.register_buffer("keep", keep.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.keep


def test_structured_removes_exactly_the_lowest_norm_units_and_hits_the_target():
    model = trained_like_model()
    dense = count_params(model)
    target = round(0.6 * dense)
    norms = baselines.unit_norms(model)
    plan = baselines.structured_plan(model, CFG, target, "global")
    pruned, widths = prune(model, CFG, plan)
    total = count_params(pruned)
    assert total == analytic_params(CFG, widths, 40, 29)["total"]
    assert total <= target
    largest_unit = 2 * (CFG.d_model + 1) + CFG.conv_kernel + 1 + 2 + CFG.d_model + 2 * (2 * CFG.d_model)  # conv + norms
    assert target - total <= largest_unit  # within one unit's parameters
    # Global ranking per kind: every removed unit has a lower norm than every kept unit of its kind
    # (allowing for the interleaving of kinds by fractional rank, check kind by kind).
    for kind in ("ffn", "query", "value", "conv"):
        groups = [g for g in GROUPS if baselines.UNIT_KIND[g] == kind]
        removed = torch.cat([norms[b][g][~plan[b][g].keep] for b in range(CFG.num_blocks) for g in groups])
        kept = torch.cat([norms[b][g][plan[b][g].keep] for b in range(CFG.num_blocks) for g in groups])
        assert len(removed) > 0 and removed.max() <= kept.min()
    # Uniform ranking removes the same fraction (to one unit) from every group of every block.
    uniform = baselines.structured_plan(model, CFG, target, "uniform")
    fractions = [float((~uniform[b][g].keep).float().mean()) for b in range(CFG.num_blocks) for g in GROUPS]
    assert max(fractions) - min(fractions) < 0.1


def test_structured_pruned_model_equals_the_masked_dense_model():
    model = trained_like_model()
    plan = baselines.structured_plan(model, CFG, round(0.5 * count_params(model)), "global")
    pruned, _ = prune(model, CFG, plan)
    for block, decisions in zip(model.encoder.blocks, plan):
        for group in GROUPS:
            setattr(*gate_seam(block, group), FixedMask(decisions[group].keep))
    torch.manual_seed(1)
    x, lengths = torch.randn(2, 120, 40), torch.tensor([120, 90])
    with torch.no_grad():
        want, want_len = model(x, lengths)
        got, got_len = pruned(x, lengths)
    assert torch.equal(want_len, got_len)
    for b, n in enumerate(got_len.tolist()):
        torch.testing.assert_close(got[b, :n], want[b, :n], atol=1e-4, rtol=1e-4)


def test_unstructured_nonzero_count_equals_the_target():
    model = trained_like_model()
    total = count_params(model)
    target = round(0.3 * total)
    baselines.apply_global_magnitude(model, target)
    baselines.make_permanent(model)
    assert not any(n.endswith("_orig") for n, _ in model.named_parameters())  # masks are permanent
    assert abs(baselines.nonzero_params(model) - target) <= 0.001 * target
    with pytest.raises(baselines.BudgetError, match="prunable"):
        baselines.apply_global_magnitude(trained_like_model(), 10)


@pytest.mark.parametrize("shrink", ["d_model", "inner"])
@pytest.mark.parametrize("reduction", [0.3, 0.5, 0.7])
def test_small_dense_lands_within_3_percent(shrink, reduction):
    cfg = ModelConfig()
    dense = analytic_params(cfg, [baselines.BlockWidths.dense(cfg)] * cfg.num_blocks, 80, 29)["total"]
    target = round((1 - reduction) * dense)
    model_cfg, widths = baselines.small_dense_shape(cfg, target, shrink, 80, 29)
    total = count_params(ConformerCTC(model_cfg, 80, 29, widths))
    assert abs(total - target) <= 0.03 * target
    assert (model_cfg.d_model < cfg.d_model) == (shrink == "d_model")


def test_a_baseline_needs_a_budget():
    with pytest.raises(ConfigError, match="needs a budget"):
        build(Config, {"method": "magnitude_structured"})
    with pytest.raises(ConfigError, match="both set"):
        build(Config, {"method": "small_dense", "prune": {"target_params": 10, "target_reduction": 0.5}})


def test_magnitude_trials_reuse_the_finished_dense_run(tiny_config, tracking_uri, tmp_path, capsys):
    tiny_config.method = "magnitude_structured"
    tiny_config.prune.target_reduction = 0.4
    structured = run_trial(tiny_config, tracking_uri, runs_dir=tmp_path)  # trains the dense run first
    assert "training it first" in capsys.readouterr().out
    tiny_config.method = "magnitude_unstructured"
    tiny_config.prune.finetune_epochs = 1
    unstructured = run_trial(tiny_config, tracking_uri, runs_dir=tmp_path)
    assert "reusing dense run" in capsys.readouterr().out

    client = mlflow.MlflowClient(tracking_uri)
    test = prepare_data(tiny_config)["test"]
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    by_method = {r.data.tags["method"]: r for r in runs}
    assert sorted(r.data.tags["method"] for r in runs) == ["dense", "magnitude_structured", "magnitude_unstructured"]
    dense_id = by_method["dense"].info.run_id
    for method, result in (("magnitude_structured", structured), ("magnitude_unstructured", unstructured)):
        run = by_method[method]
        assert run.info.status == "FINISHED" and run.data.tags["source_dense_run_id"] == dense_id
        target = int(run.data.tags["budget.target_params"])
        assert result.metrics["params/total"] <= target and result.metrics["params/dense_total"] > target
        # The logged test WER is that of the exported model: recomputed from model.pt, it agrees.
        exported, saved = load_model(client.download_artifacts(run.info.run_id, "model.pt", str(tmp_path / method)))
        wer, cer, _ = error_rates(exported, test, tokenizer_from_state(saved["tokenizer"]), saved["feature_mean"],
                                  saved["feature_std"], torch.device("cpu"), batch_frames(tiny_config))
        assert (wer, cer) == (run.data.metrics["test/wer"], run.data.metrics["test/cer"]), method
    # Structured pruning started from the dense run's weights: the never-pruned front end is that model's.
    dense_model, _ = load_model(client.download_artifacts(dense_id, "model.pt", str(tmp_path / "dense")))
    pruned_model, _ = load_model(client.download_artifacts(by_method["magnitude_structured"].info.run_id, "model.pt",
                                                           str(tmp_path / "pruned")))
    for (name, a), (_, b) in zip(dense_model.encoder.subsampling.state_dict().items(),
                                 pruned_model.encoder.subsampling.state_dict().items()):
        assert torch.equal(a, b), name
    assert structured.metrics["flops/encoder_10s"] < structured.metrics["flops/dense_encoder_10s"]
    # Unstructured counts nonzero weights and claims no FLOP saving.
    assert abs(unstructured.metrics["params/total"] - target) <= 0.001 * target
    assert unstructured.metrics["flops/encoder_10s"] == unstructured.metrics["flops/dense_encoder_10s"]
    assert "finetune/train/loss" in by_method["magnitude_unstructured"].data.metrics


def test_small_dense_trial_trains_a_model_of_the_budget(tiny_config, tracking_uri, tmp_path):
    tiny_config.method = "small_dense"
    tiny_config.prune.target_reduction = 0.5
    tiny_config.train.epochs = 1
    result = run_trial(tiny_config, tracking_uri, runs_dir=tmp_path)
    assert abs(result.metrics["params/reduction"] - 0.5) <= 0.03
    run = mlflow.MlflowClient(tracking_uri).get_run(result.run_id)
    assert run.data.tags["small_dense.shape"].startswith("d")
    assert run.info.run_name == "small-dense-r0.5-s0"
