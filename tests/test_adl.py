"""The adaptive dropout layer, its regulariser and schedule, and an adaptive-dropout trial end to end."""
from __future__ import annotations

import math
from pathlib import Path

import mlflow
import pytest
import torch

from study.method.adaptive_dropout import (
    AdaptiveDropout,
    AdlSettings,
    annealed_tau,
    regulariser,
    relaxed_mask_mean,
    target_logit,
)
from tests.helpers import run_python

REPO = Path(__file__).resolve().parents[1]


def test_target_schedule_matches_its_formula():
    c0, c1, t0, t1 = 3.0, -4.0, 0.1, 0.8
    for t in (0.0, 0.1, 0.3, 0.45, 0.8, 0.95, 1.0):
        expected = c0 + (c1 - c0) * min(1.0, max(0.0, (t - t0) / (t1 - t0)))
        assert target_logit(t, c0, c1, t0, t1) == pytest.approx(expected)
    assert target_logit(0.45, c0, c1, t0, t1) == pytest.approx(-0.5)
    assert annealed_tau(0.0, 1.0, 0.1) == pytest.approx(1.0) and annealed_tau(1.0, 1.0, 0.1) == pytest.approx(0.1)
    assert annealed_tau(0.5, 1.0, None) == 1.0


def test_regulariser_matches_its_formula():
    a = AdaptiveDropout(4, "ffn", AdlSettings())
    b = AdaptiveDropout(2, "conv", AdlSettings())
    a.beta.data = torch.tensor([1.0, 2.0, -1.0, 0.0])
    b.beta.data = torch.tensor([3.0, -2.0])
    c = 0.5
    units = torch.cat([a.beta - c, b.beta - c]).pow(2)
    assert regulariser([a, b], 0.1, c).item() == pytest.approx(0.1 * units.mean().item())
    per_layer = ((a.beta - c).pow(2).mean() + (b.beta - c).pow(2).mean()) / 2
    assert regulariser([a, b], 0.1, c, "layer").item() == pytest.approx(0.1 * per_layer.item())
    weighted = torch.cat([2.0 * (a.beta - c).pow(2), (b.beta - c).pow(2)]).mean()
    assert regulariser([a, b], 0.1, c, "unit", {"ffn": 2.0}).item() == pytest.approx(0.1 * weighted.item())
    assert regulariser([a, b], 0.1, c, "sum").item() == pytest.approx(0.1 * units.sum().item())  # the paper's


def test_sum_normalisation_pulls_each_unit_the_same_whatever_the_model_size():
    def pull_on_first_unit(units: int, normalization: str) -> float:
        layer = AdaptiveDropout(units, "ffn", AdlSettings(beta0=1.0))
        regulariser([layer], 0.1, -1.0, normalization).backward()
        return layer.beta.grad[0].item()
    assert pull_on_first_unit(10, "sum") == pytest.approx(pull_on_first_unit(1000, "sum")) == pytest.approx(0.4)
    assert pull_on_first_unit(1000, "unit") == pytest.approx(pull_on_first_unit(10, "unit") / 100)


@pytest.mark.parametrize("granularity", ["frame", "utterance"])
@pytest.mark.parametrize("straight_through", [False, True])
def test_training_masks_are_finite_and_gradients_reach_the_logits(granularity, straight_through):
    layer = AdaptiveDropout(6, "ffn", AdlSettings(mask_granularity=granularity, straight_through=straight_through,
                                                  rescale="inverted"))
    layer.beta.data = torch.tensor([-60.0, -3.0, 0.0, 0.5, 3.0, 60.0])  # extreme logits stay finite
    x = torch.randn(4, 7, 6, requires_grad=True)  # (B, T, n)
    torch.manual_seed(0)
    y = layer.train()(x)
    assert torch.isfinite(y).all()
    (y * torch.randn_like(y)).sum().backward()  # a loss whose gradient does not vanish where y = 0
    assert layer.beta.grad is not None and torch.isfinite(layer.beta.grad).all()
    assert layer.beta.grad[1:5].abs().min() > 0
    if granularity == "utterance":  # one mask per unit and utterance, shared over time
        mask = (y / x).detach()
        torch.testing.assert_close(mask, mask[:, :1].expand_as(mask), rtol=1e-5, atol=1e-5)


def test_evaluation_thresholds_and_scales():
    layer = AdaptiveDropout(3, "mhsa", AdlSettings(threshold=0.5))
    layer.beta.data = torch.tensor([-1.0, 0.5, 2.0])
    x = torch.ones(1, 2, 3)
    p = torch.sigmoid(layer.beta.data)
    mean = relaxed_mask_mean(layer.beta.data, layer.tau)  # what the relaxed training masks averaged
    torch.testing.assert_close(layer.eval()(x)[0, 0], torch.tensor([0.0, mean[1], mean[2]]))
    layer.settings.inference = "hard"
    torch.testing.assert_close(layer(x)[0, 0], torch.tensor([0.0, 1.0, 1.0]))
    layer.uncut = "mean"  # the diagnostic: no unit cut, each scaled as evaluation scales a kept one
    assert torch.equal(layer(x), x)
    layer.settings.inference = "expected"
    torch.testing.assert_close(layer(x)[0, 0], mean)
    layer.uncut = "p"  # the scale evaluation used before E[m]
    torch.testing.assert_close(layer(x)[0, 0], p)
    layer.settings.straight_through = True  # forward masks are m > 1/2: their mean is p itself
    layer.uncut = None
    torch.testing.assert_close(layer(x)[0, 0], torch.tensor([0.0, p[1], p[2]]))
    assert not torch.equal(layer.train()(x), layer.eval()(x))  # training masks ignore the flag


@pytest.mark.parametrize("tau", [1.0, 0.5, 0.1, 2.0])
def test_tabulated_mask_mean_matches_monte_carlo(tau):
    """E[sigmoid((beta + L) / tau)] from the table against 2M draws of logistic noise (standard error
    under 2.5e-4), over logits from decided-off to decided-on; it differs from p = sigmoid(beta) at tau ~ 1."""
    betas = torch.tensor([-6.0, -2.0, -0.3, 0.0, 0.5, 1.7, 3.0, 6.0, 25.0])
    generator = torch.Generator().manual_seed(0)
    noise = torch.rand(2_000_000, generator=generator, dtype=torch.float64).logit()
    monte_carlo = torch.stack([torch.sigmoid((b + noise) / tau).mean() for b in betas.double()]).float()
    torch.testing.assert_close(relaxed_mask_mean(betas, tau), monte_carlo, rtol=1e-5, atol=1e-3)
    if tau == 1.0:  # the review's figures: beta = 3 -> 0.887 against p = 0.953; beta = -2 -> 0.205 against 0.119
        assert relaxed_mask_mean(torch.tensor([3.0, -2.0]), tau) == pytest.approx([0.887, 0.205], abs=2e-3)


def test_inverted_rescale_gives_masks_of_mean_one():
    layer = AdaptiveDropout(4, "ffn", AdlSettings(tau=1.0, rescale="inverted", inference="hard"))
    layer.beta.data = torch.tensor([3.0, 1.0, 0.0, -1.0])
    masked = layer.train()(torch.ones(4000, 50, 4))
    torch.testing.assert_close(masked.mean(dim=(0, 1)), torch.ones(4), rtol=1e-5, atol=0.02)


def test_polarised_share_counts_units_outside_the_band():
    from study.method.adl_controller import polarised_share
    assert polarised_share(torch.tensor([0.01, 0.04, 0.05, 0.5, 0.95, 0.96, 0.999, 0.3])) == pytest.approx(4 / 8)


@pytest.mark.slow
def test_logits_keep_their_learning_rate_when_the_weights_decay(tiny_config, tmp_path):
    """adl.lr_schedule = "constant": after their warm-up the logits' rate stays at adl.lr to the last
    step, where the weights' cosine has reached zero; "shared" decays both. The logits' warm-up is the
    weights' up to a tenth of training, never longer (the quick default warms the weights up for half)."""
    from study.data.features import mean_std
    from study.data.prepared import prepare_data
    from study.data.tokenizer import build_tokenizer
    from study.method.adl_controller import AdlController
    from study.method.attach import attach_adls
    from study.training import Trainer
    from study.trial_context import build_model
    train = prepare_data(tiny_config)["train"]
    tokenizer = build_tokenizer(tiny_config.text, train.transcripts, tiny_config.data.cache_dir)
    for schedule, logits_at_end in (("constant", 1.0), ("shared", 0.0)):
        tiny_config.adl.lr_schedule = schedule
        model = build_model(tiny_config, tokenizer.vocab_size)
        adl = AdlController(attach_adls(model, ["ffn"], AdlSettings()), tiny_config.adl)
        trainer = Trainer(tiny_config, model, train, tokenizer, *mean_std(train.features), tmp_path / f"{schedule}.pt",
                          torch.device("cpu"), param_groups=adl.param_groups(model, 1e-3, 0.01))
        weights, logits = trainer.scheduler.lr_lambdas
        end = trainer.total_steps
        assert weights(0) == logits(0) < 1.0  # the same warm-up (tiny_config's is a tenth)
        assert weights(end) == pytest.approx(0.0) and logits(end) == pytest.approx(logits_at_end)
    tiny_config.adl.lr_schedule, tiny_config.train.warmup_fraction = "constant", 0.5
    trainer = Trainer(tiny_config, model, train, tokenizer, *mean_std(train.features), tmp_path / "long.pt",
                      torch.device("cpu"), param_groups=adl.param_groups(model, 1e-3, 0.01))
    weights, logits = trainer.scheduler.lr_lambdas
    tenth = round(trainer.total_steps * 0.1)
    assert logits(tenth) == 1.0 and weights(tenth) < 0.5  # logits at full rate while the weights still warm up


def test_batch_norm_recalibration_uses_evaluation_activations_and_changes_no_weight():
    from study.config import ModelConfig
    from study.method.attach import attach_adls
    from study.method.batch_norm import recalibrate_batch_norm
    from study.model.conformer import ConformerCTC
    cfg = ModelConfig(d_model=16, num_heads=2, ffn_dim=24, conv_channels=8, conv_kernel=3, num_blocks=1,
                      subsampling=4, front_end="conv2d", subsampling_channels=4)
    torch.manual_seed(0)
    model = ConformerCTC(cfg, n_mels=20, vocab_size=7)
    attach_adls(model, ["ffn", "mhsa", "conv"], AdlSettings())
    conv = model.encoder.blocks[0].conv
    conv.gate.beta.data = torch.linspace(-3, 3, 8)  # some channels cut, others scaled by p
    bn_inputs = []
    conv.batch_norm.register_forward_pre_hook(lambda m, args: bn_inputs.append(args[0].detach()))
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    batches = [(torch.randn(3, 60, 20), torch.tensor([60, 60, 60])) for _ in range(2)]
    model.eval()
    assert recalibrate_batch_norm(model, batches) == 2
    seen = torch.cat([h.transpose(0, 1).reshape(8, -1) for h in bn_inputs], dim=1)  # (C, every frame)
    torch.testing.assert_close(conv.batch_norm.running_mean, seen.mean(1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(conv.batch_norm.running_var, seen.var(1), rtol=0.05, atol=1e-6)  # mean of 2 batch variances
    assert torch.all(conv.batch_norm.running_var[:4] < 1e-10)  # cut channels (p < 0.5): only the depthwise bias
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())
    assert not model.training and not conv.batch_norm.training and conv.batch_norm.momentum == 0.1
    model.train()  # the caller's mode comes back, whichever it was
    recalibrate_batch_norm(model, batches)
    assert model.training and conv.batch_norm.training and conv.gate.training


@pytest.mark.slow
def test_recalibration_sample_spans_the_corpus_lengths_not_its_shortest(tiny_config, tmp_path):
    """Batches in length order would hand recalibration the shortest utterances only; the seeded random
    sample follows the corpus's length distribution, and the same seed gives the same sample."""
    from study.data.features import mean_std
    from study.data.prepared import prepare_data
    from study.data.tokenizer import build_tokenizer
    from study.training import Trainer
    from study.trial_context import build_model
    tiny_config.data.synthetic.train_utterances = 60
    train = prepare_data(tiny_config)["train"]
    tokenizer = build_tokenizer(tiny_config.text, train.transcripts, tiny_config.data.cache_dir)
    trainer = Trainer(tiny_config, build_model(tiny_config, tokenizer.vocab_size), train, tokenizer,
                      *mean_std(train.features), tmp_path / "c.pt", torch.device("cpu"))
    corpus = sorted(train.lengths[i] for i in trainer.train_indices)
    sample = sorted(int(n) for _, lengths in trainer.sample_batches(20, seed=0) for n in lengths)
    assert len(sample) == 20
    shortest = corpus[:20]
    assert max(sample) > max(shortest)  # not the 20 shortest
    median = corpus[len(corpus) // 2]
    assert 4 <= sum(n > median for n in sample) <= 16  # about half above the corpus's median
    again = sorted(int(n) for _, lengths in trainer.sample_batches(20, seed=0) for n in lengths)
    assert again == sample
    everything = sorted(int(n) for _, lengths in trainer.sample_batches(1000, seed=0) for n in lengths)
    assert everything == corpus  # asked for more than there are: every utterance once


@pytest.mark.slow
def test_adaptive_dropout_trial_prunes_logs_and_saves_a_reloadable_model(tiny_config, tracking_uri, tmp_path):
    from study.trial import run_trial
    cfg = tiny_config
    cfg.method = "adaptive_dropout"
    cfg.train.epochs = 3
    cfg.adl.alpha, cfg.adl.lr, cfg.adl.c1, cfg.adl.t0, cfg.adl.t1 = 5.0, 0.5, -8.0, 0.0, 0.5  # prune hard, fast
    cfg.adl.finetune_epochs = 1
    metrics = run_trial(cfg, tracking_uri, runs_dir=tmp_path).metrics
    assert 0.0 < metrics["params/reduction"] < 1.0
    assert metrics["params/total"] < metrics["params/dense_total"]
    assert metrics["flops/encoder_10s"] < metrics["flops/dense_encoder_10s"]
    client = mlflow.MlflowClient(tracking_uri)
    run = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])[0]
    assert run.info.status == "FINISHED" and run.data.tags["method"] == "adaptive_dropout"
    for key in ("train/reg", "adl/c_t", "adl/kept_fraction/ffn", "adl/kept_fraction/mhsa", "adl/kept_fraction/conv",
                "params/kept/ffn", "units/kept/conv", "latency/ms_b1_10s", "test/wer", "test/cer",
                "finetune/train/loss", "finetune/dev/wer", "adl/polarised/ffn", "adl/polarised/all",
                "adl/dev_wer_uncut", "adl/dev_wer_uncut_scaled_by_p"):
        assert key in run.data.metrics, key
    assert run.data.metrics["train/epochs_total"] == 4  # 3 epochs with ADLs, 1 of fine-tuning
    assert 0.0 <= run.data.metrics["adl/polarised/all"] <= 1.0
    c_t = [m.value for m in client.get_metric_history(run.info.run_id, "adl/c_t")]
    assert c_t == sorted(c_t, reverse=True) and c_t[-1] == pytest.approx(-8.0)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"model.pt", "config.toml", "retention_histogram.png", "retention.json"} <= artifacts

    # The exported model reloads in a fresh interpreter with no ADL or training code, same outputs.
    model_path = client.download_artifacts(run.info.run_id, "model.pt", str(tmp_path))
    script = f"""
import sys, torch
from study.model.io import load_model
model, saved = load_model({model_path!r})
assert not any(m in sys.modules for m in ("study.method.adaptive_dropout", "study.training", "study.method.pruning", "study.trial"))
assert all("beta" not in name for name in saved["state_dict"])
torch.manual_seed(0)
feats = torch.randn(2, 120, saved["n_mels"])
out, _ = model(feats, torch.tensor([120, 90]))
torch.save(out, {str(tmp_path / 'out.pt')!r})
print(sum(p.numel() for p in model.parameters()))
"""
    done = run_python(["-c", script], REPO)  # forked from the preloaded server: torch but no study module
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.strip()) == metrics["params/total"]
    from study.model.io import load_model
    model, _ = load_model(model_path)
    torch.manual_seed(0)
    feats = torch.randn(2, 120, model.n_mels)
    torch.testing.assert_close(model(feats, torch.tensor([120, 90]))[0], torch.load(tmp_path / "out.pt"),
                               rtol=1e-5, atol=1e-5)


def test_controller_schedule_hard_phase_and_optimizer_groups():
    from study.config import AdlConfig
    from study.method.adl_controller import AdlController
    cfg = AdlConfig(alpha=0.5, tau=1.0, tau_end=0.1, hard_phase=0.2, lr=0.05)
    layers = [AdaptiveDropout(5, "ffn", AdlSettings()), AdaptiveDropout(3, "conv", AdlSettings())]
    controller = AdlController(layers, cfg)
    model = torch.nn.ModuleDict({"a": layers[0], "b": layers[1], "w": torch.nn.Linear(2, 2)})
    groups = controller.param_groups(model, lr=1e-3, weight_decay=0.01)
    assert groups[1]["weight_decay"] == 0.0 and groups[1]["lr"] == 0.05 and len(groups[1]["params"]) == 2
    assert len(groups[0]["params"]) == 2  # the Linear's weight and bias only

    controller.begin_step(0.5)  # mid-training: soft masks, tau annealed before the forward pass
    assert layers[0].tau == pytest.approx(annealed_tau(0.5, 1.0, 0.1)) and not layers[0].frozen
    reg = controller.loss(0.5)  # regulariser on
    c = target_logit(0.5, cfg.c0, cfg.c1, cfg.t0, cfg.t1)
    assert reg.item() == pytest.approx(regulariser(layers, 0.5, c).item())

    controller.begin_step(0.9)  # the final 20%: thresholded masks, logits frozen
    assert layers[0].frozen and not layers[0].beta.requires_grad
    assert controller.loss(0.9).item() == 0.0
    x = torch.randn(2, 4, 5)
    assert torch.equal(layers[0].train()(x), layers[0].eval()(x))
    metrics = controller.epoch_metrics(0.9)
    assert metrics["adl/kept_fraction/ffn"] == 1.0 and "adl/mean_retention/conv" in metrics


def test_adaptive_dropout_with_no_location_is_the_dense_model(tiny_config, tracking_uri, tmp_path):
    """Invariant 3 of docs/methods.md, the eighth subset of the location ablation: no ADL anywhere is the dense
    trial at the same seed: same parameters, same training, so the same error rates to the last digit."""
    from study.trial import run_trial
    tiny_config.train.epochs = 1
    dense = run_trial(tiny_config, tracking_uri, runs_dir=tmp_path).metrics
    tiny_config.method = "adaptive_dropout"
    tiny_config.adl.locations = []
    none = run_trial(tiny_config, tracking_uri, runs_dir=tmp_path).metrics
    assert none["params/reduction"] == 0.0 and none["params/total"] == none["params/dense_total"]
    for key in ("params/total", "params/encoder", "flops/encoder_10s", "dev/wer", "dev/cer", "test/wer", "test/cer"):
        assert none[key] == dense[key], key
    assert 0.0 < dense["dev/cer"] < 1.0  # a trained model, not two empty outputs that agree by accident


def test_hard_concrete_masks_reach_exactly_zero_and_one_with_their_probabilities():
    """Louizos et al. 2018: P(z = 0) = 1 - sigmoid(beta + tau log 11), P(z = 1) = sigmoid(beta - tau log 11);
    evaluation multiplies by clip(1.2 sigmoid(beta) - 0.1, 0, 1), which is exactly 0 or 1 for |beta| > 2.4."""
    tau = 2 / 3
    layer = AdaptiveDropout(4, "ffn", AdlSettings(gate="hard_concrete", tau=tau, noise="fresh"))
    layer.beta.data = torch.tensor([-3.0, -1.0, 0.5, 2.0])
    torch.manual_seed(0)
    mask = layer.train()(torch.ones(50, 2000, 4)).reshape(-1, 4)  # (samples, n)
    shift = tau * math.log(11.0)
    torch.testing.assert_close((mask == 0).float().mean(0), 1 - torch.sigmoid(layer.beta.data + shift), rtol=1e-5, atol=0.01)
    torch.testing.assert_close((mask == 1).float().mean(0), torch.sigmoid(layer.beta.data - shift), rtol=1e-5, atol=0.01)
    torch.testing.assert_close(layer.keep_probability.detach(), torch.sigmoid(layer.beta.data + shift))
    gate = (torch.sigmoid(layer.beta.data) * 1.2 - 0.1).clamp(0, 1)
    torch.testing.assert_close(layer.retention.detach(), gate)
    assert gate[0] == 0.0
    torch.testing.assert_close(layer.eval()(torch.ones(1, 1, 4))[0, 0], torch.where(gate >= 0.5, gate, 0.0))
    layer.beta.data = torch.tensor([-2.5, 2.5, 0.0, 0.0])
    assert layer.retention[:2].tolist() == [0.0, 1.0]


def test_hard_concrete_rejects_the_inverted_rescale():
    from study.config import AdlConfig
    with pytest.raises(ValueError, match="hard_concrete"):
        AdlConfig(gate="hard_concrete", rescale="inverted", inference="hard").validate()


def test_gradients_reach_the_logits_through_hard_concrete_masks_and_the_keep_probability():
    layer = AdaptiveDropout(4, "conv", AdlSettings(gate="hard_concrete", tau=2 / 3))
    layer.beta.data = torch.tensor([-2.0, 0.0, 1.0, 2.0])
    x = torch.randn(8, 50, 4)  # (B, T, n)
    torch.manual_seed(0)
    (layer.train()(x) * torch.randn(8, 50, 4)).sum().backward()
    assert torch.isfinite(layer.beta.grad).all() and (layer.beta.grad.abs() > 0).all()
    layer.beta.grad = None
    layer.keep_probability.sum().backward()  # what the budget controller differentiates
    assert (layer.beta.grad > 0).all()


@pytest.mark.parametrize("gate", ["gumbel_sigmoid", "hard_concrete"])
def test_polarisation_pushes_straddling_units_to_their_side_of_the_threshold(gate):
    """adl.polarise: undecided gates (0.05 < g < 0.95) each move to the side of 1/2 they are on, so every
    unit ends decided and the threshold cut keeps exactly the units it kept before."""
    from study.config import AdlConfig
    from study.method.adl_controller import AdlController, polarised_share
    torch.manual_seed(0)
    layers = [AdaptiveDropout(40, "ffn", AdlSettings(gate=gate)), AdaptiveDropout(24, "mhsa", AdlSettings(gate=gate))]
    for layer in layers:
        layer.beta.data.uniform_(-1.5, 1.5)
    kept = torch.cat([layer.keep_mask() for layer in layers])
    controller = AdlController(layers, AdlConfig(alpha=0.0, polarise=1.0, t1=0.8))
    assert controller.polarise_weight(0.8) == 0.0 and controller.polarise_weight(0.9) == pytest.approx(0.5)
    assert controller.polarise_weight(1.0) == 1.0 and controller.loss(0.5).item() == 0.0
    retention = lambda: torch.cat([layer.retention.detach() for layer in layers])
    assert polarised_share(retention()) < 0.3
    optimiser = torch.optim.Adam([layer.beta for layer in layers], lr=0.05)
    for _ in range(200):
        optimiser.zero_grad()
        controller.loss(1.0).backward()
        optimiser.step()
    assert polarised_share(retention()) == 1.0
    assert torch.equal(torch.cat([layer.keep_mask() for layer in layers]), kept)


@pytest.mark.parametrize("granularity", ["frame", "utterance"])
def test_hard_concrete_mask_matches_the_stretch_and_clip_traced_by_autograd(granularity):
    """HardConcreteMask's own backward against autograd through sigmoid, stretch and clip, with logits
    that leave some mask values clipped at 0 and 1 and some inside."""
    from study.method.adaptive_dropout import (
        HardConcreteMask,
        _stretch,
        relaxed_bernoulli,
    )
    torch.manual_seed(0)
    beta = torch.linspace(-4, 4, 24, requires_grad=True)
    noise = torch.logit(torch.rand((6, 5, 24) if granularity == "frame" else (6, 1, 24)), 1e-6)
    grad_out = torch.randn(6, 5, 24)
    tau = 2 / 3
    reference = _stretch(relaxed_bernoulli(beta, noise, tau))  # the same rounding, traced by autograd
    (reference * grad_out).sum().backward()
    expected, beta.grad = beta.grad.clone(), None
    mask = HardConcreteMask.apply(beta, noise, tau)
    (mask * grad_out).sum().backward()
    assert torch.equal(mask, reference.detach())
    assert (mask == 0).any() and (mask == 1).any() and ((mask > 0) & (mask < 1)).any()
    torch.testing.assert_close(beta.grad, expected)
