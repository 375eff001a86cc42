"""The budget controller (adl.target_reduction): exact expected sizes and a Lagrangian that reaches its target."""
from __future__ import annotations

import itertools

import pytest
import torch

from study.config import AdlConfig, ModelConfig
from study.evaluation.accounting import count_params
from study.method.adaptive_dropout import AdlSettings
from study.method.adl_controller import AdlController
from study.method.attach import adl_decisions, attach_adls
from study.method.budget import BudgetController, expected_params
from study.method.pruning import prune
from study.model import ConformerCTC
from study.model.size import analytic_params

CFG = ModelConfig(d_model=32, num_heads=4, ffn_dim=48, conv_channels=24, conv_kernel=5, num_blocks=2,
                  subsampling=4, front_end="conv2d", subsampling_channels=8)
N_MELS, VOCAB = 40, 29


def model_with_adls(locations, gate="gumbel_sigmoid"):
    torch.manual_seed(0)
    model = ConformerCTC(CFG, N_MELS, VOCAB)
    return model, attach_adls(model, locations, AdlSettings(gate=gate))


@pytest.mark.parametrize("locations", [list(s) for r in (1, 2, 3) for s in itertools.combinations(("ffn", "mhsa", "conv"), r)])
@pytest.mark.parametrize("gate", ["gumbel_sigmoid", "hard_concrete"])
def test_expected_size_is_the_pruned_models_real_size_once_every_unit_is_decided(locations, gate):
    model, layers = model_with_adls(locations, gate)
    for layer in layers:  # p = 0 or 1 (|beta| = 100): a random half of the units go
        layer.beta.data = torch.where(torch.rand_like(layer.beta) < 0.5, -100.0, 100.0)
    block0, block1 = model.encoder.blocks
    if "ffn" in locations:
        block0.ffn1.gate.beta.data.fill_(-100.0)  # a whole FFN: only its output bias stays
    if "mhsa" in locations:
        block0.mhsa.value_gate.beta.data[:8].fill_(-100.0)  # head 0 loses its values: its queries go too
        block0.mhsa.query_gate.beta.data[:8].fill_(100.0)
        block1.mhsa.value_gate.beta.data[8:16].fill_(100.0)  # head 1 keeps values but no query
        block1.mhsa.query_gate.beta.data[8:16].fill_(-100.0)
    if "conv" in locations:
        block1.conv.gate.beta.data.fill_(-100.0)  # every conv channel of a block
    pruned, widths = prune(model.eval(), CFG, adl_decisions(model))
    real = count_params(pruned)
    assert real == analytic_params(CFG, widths, N_MELS, VOCAB)["total"]
    assert float(expected_params(model, CFG).detach()) == pytest.approx(real, abs=0.5)


def test_expected_size_of_undecided_units_is_their_probability_weighted_share():
    model, layers = model_with_adls(["ffn"])
    dense = count_params(model)
    for layer in layers:
        layer.beta.data.fill_(100.0)
    assert float(expected_params(model, CFG).detach()) == pytest.approx(dense, abs=0.5)
    for layer in layers:
        layer.beta.data.fill_(0.0)  # p = 1/2 each: half of every hidden unit's 2d + 1 parameters expected
    units = 2 * CFG.num_blocks * CFG.ffn_dim
    assert float(expected_params(model, CFG).detach()) == pytest.approx(dense - units * (2 * CFG.d_model + 1) / 2, abs=1.0)


def test_the_cut_measure_is_the_pruned_size_of_undecided_units_with_the_expectations_gradient():
    model, layers = model_with_adls(["ffn", "mhsa", "conv"])
    for layer in layers:
        layer.beta.data = torch.randn_like(layer.beta) * 2.0  # p spread over (0, 1): nothing decided
    cut = expected_params(model, CFG, cut=True)
    pruned, _ = prune(model.eval(), CFG, adl_decisions(model))
    assert float(cut.detach()) == pytest.approx(count_params(pruned), abs=0.5)
    cut.backward()
    straight = [layer.beta.grad.clone() for layer in layers]
    assert all(g.abs().sum() > 0 for g in straight)  # the logits still feel the size


@pytest.mark.parametrize("target,measure,gate", [(0.3, "expected", "gumbel_sigmoid"), (0.5, "expected", "gumbel_sigmoid"),
                                               (0.5, "cut", "gumbel_sigmoid"), (0.7, "cut", "gumbel_sigmoid"),
                                               (0.5, "cut", "hard_concrete")])  # expected + hard concrete: refused
def test_the_lagrangian_drives_its_measure_to_the_target(target, measure, gate):
    """The budget term alone (no task loss): logits descend, multipliers ascend; the measured reduction
    settles within a point of the target and the multipliers turn positive/negative as the gap demands."""
    model, layers = model_with_adls(["ffn", "mhsa", "conv"], gate)
    for layer in layers:  # units start spread out, as the task loss would keep them, so they cross one by one
        layer.beta.data = 3.0 + torch.randn_like(layer.beta)
    budget = BudgetController(model, CFG, target, warmup=0.2, measure=measure)
    adl = AdlController(layers, AdlConfig(lambda_lr=0.05, lr=0.05, gate=gate), budget)
    groups = adl.param_groups(model, lr=0.0, weight_decay=0.0)
    optimizer = torch.optim.AdamW(groups, fused=True)
    steps = 600
    for step in range(steps):
        optimizer.zero_grad()
        adl.loss(step / steps).backward()
        optimizer.step()
    metrics = adl.epoch_metrics(1.0)
    assert metrics["adl/target_reduction"] == target
    assert metrics[f"adl/{measure}_reduction"] == pytest.approx(target, abs=0.01)
    if measure == "cut":  # what the pruner removes
        pruned, _ = prune(model.eval(), CFG, adl_decisions(model))
        assert 1 - count_params(pruned) / count_params(ConformerCTC(CFG, N_MELS, VOCAB)) == pytest.approx(target, abs=0.01)
    assert metrics["adl/lambda1"] != 0.0 and metrics["adl/lambda2"] > 0.0


def test_a_budget_trial_logs_the_controller_and_resumes_its_multipliers(tiny_config, tracking_uri, tmp_path, monkeypatch):
    from study.training import Trainer
    from study.trial import run_trial
    tiny_config.method = "adaptive_dropout"
    tiny_config.adl.target_reduction, tiny_config.adl.lambda_lr = 0.3, 0.5
    saved = {}
    original = Trainer.save_checkpoint

    def keep_multipliers(self):
        original(self)
        saved[self.history.epoch] = torch.load(self.checkpoint_path, weights_only=False)["extra"]["budget_lambdas"]
    monkeypatch.setattr(Trainer, "save_checkpoint", keep_multipliers)
    metrics = run_trial(tiny_config, tracking_uri, runs_dir=tmp_path).metrics
    assert len(saved) == tiny_config.train.epochs and saved[1].abs().sum() > 0  # the multipliers moved and were saved
    import mlflow
    client = mlflow.MlflowClient(tracking_uri)
    run = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])[0]
    for key in ("adl/expected_reduction", "adl/target_reduction", "adl/lambda1", "adl/lambda2"):
        assert key in run.data.metrics, key
    assert run.data.metrics["adl/target_reduction"] == pytest.approx(0.3)
    assert 0.0 <= metrics["params/reduction"] < 1.0


@pytest.mark.parametrize("anti_windup", [False, True])
def test_anti_windup_stops_the_multiplier_pushing_past_the_target(anti_windup):
    """Logits slower than the multipliers (as under a task loss): lambda1 winds up while the cut lags the
    ramp. Without the reset the cut runs far past the target before coming back; with it, barely."""
    model, layers = model_with_adls(["ffn", "mhsa", "conv"], "hard_concrete")
    for layer in layers:
        layer.beta.data = 3.0 + torch.randn_like(layer.beta)
    target = 0.7
    budget = BudgetController(model, CFG, target, warmup=0.5, measure="cut", anti_windup=anti_windup)
    adl = AdlController(layers, AdlConfig(lambda_lr=0.05, lr=0.01, gate="hard_concrete"), budget)
    optimizer = torch.optim.AdamW(adl.param_groups(model, lr=0.0, weight_decay=0.0), fused=True)
    steps, peak = 600, 0.0
    for step in range(steps):
        optimizer.zero_grad()
        adl.loss(step / steps).backward()
        optimizer.step()
        peak = max(peak, float(budget.reduction(cut=True).detach()))
    if anti_windup:
        assert peak - target < 0.02
        assert float(budget.reduction(cut=True).detach()) == pytest.approx(target, abs=0.01)
    else:  # the failure the reset exists for
        assert peak - target > 0.1


@pytest.mark.parametrize("gap", [1.0, 0.005])
def test_polarisation_waits_for_the_cut_to_reach_the_target(gap):
    """adl.polarise with a budget whose cut lags the ramp (logits slower than the multipliers). Pushing as
    soon as the warm-up ends (a gap of 1.0 lets it) holds the kept units at 1 against the multipliers and
    the cut stalls short of the target (as a 70% target did at 65.8% on the main recipe); waiting until
    the cut is within adl.polarise_gap of it, the cut lands and then every unit is decided."""
    from study.method.adl_controller import polarised_share
    model, layers = model_with_adls(["ffn", "mhsa", "conv"], "hard_concrete")
    for layer in layers:
        layer.beta.data = 3.0 + torch.randn_like(layer.beta)
    target = 0.7
    budget = BudgetController(model, CFG, target, warmup=0.5, measure="cut")
    cfg = AdlConfig(lambda_lr=0.05, lr=0.005, gate="hard_concrete", target_warmup=0.5, polarise=0.5, polarise_gap=gap)
    adl = AdlController(layers, cfg, budget)
    optimizer = torch.optim.AdamW(adl.param_groups(model, lr=0.0, weight_decay=0.0), fused=True)
    for step in range(900):  # 600 steps of training, then 300 more at its end (full weight, full target)
        optimizer.zero_grad()
        adl.loss(min(1.0, step / 600)).backward()
        optimizer.step()
    cut = float(budget.reduction(cut=True).detach())
    if gap < 1.0:
        assert cut == pytest.approx(target, abs=0.01)
        assert polarised_share(torch.cat([layer.retention.detach() for layer in layers])) == 1.0
    else:  # the failure the wait exists for
        assert target - cut > 0.05
