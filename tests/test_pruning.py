"""Invariants 1-3 of docs/methods.md: exact physical pruning, honest accounting, and locations that change nothing."""
from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from study.config import ModelConfig
from study.evaluation.accounting import count_params, steady_times
from study.method.adaptive_dropout import AdlSettings
from study.method.attach import adl_decisions, adl_layers, attach_adls
from study.method.pruning import prune
from study.model import ConformerCTC
from study.model.size import analytic_params

CFG = ModelConfig(d_model=32, num_heads=4, ffn_dim=48, conv_channels=24, conv_kernel=5, num_blocks=2,
                  subsampling=4, front_end="conv2d", subsampling_channels=8, dropout=0.1)
N_MELS, VOCAB = 40, 29
SUBSETS = [list(s) for r in range(4) for s in itertools.combinations(("ffn", "mhsa", "conv"), r)]


def padded_batch():
    torch.manual_seed(1)
    return torch.randn(3, 90, N_MELS), torch.tensor([90, 61, 33])  # unequal lengths, zero-padded tails


def trained_like_model(locations, settings=AdlSettings(), cfg=CFG, vocab=VOCAB):
    """A model with ADLs whose logits straddle the threshold and whose BatchNorm stats are not trivial."""
    torch.manual_seed(0)
    model = ConformerCTC(cfg, N_MELS, vocab)
    layers = attach_adls(model, locations, settings)
    for layer in layers:
        layer.beta.data = torch.randn_like(layer.beta) * 2.0
    for block in model.encoder.blocks:
        bn = block.conv.batch_norm
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.normal_()
        block.conv.depthwise.bias.data.normal_()
    model.train()
    with torch.no_grad():  # fill BatchNorm running statistics
        for _ in range(3):
            model(*padded_batch())
    return model.eval(), layers


def assert_exact(model, pruned):
    feats, lengths = padded_batch()
    with torch.no_grad():
        ref, ref_len = model(feats, lengths)
        out, out_len = pruned(feats, lengths)
    assert torch.equal(ref_len, out_len)
    for b, n in enumerate(ref_len.tolist()):  # compare real frames only
        assert (ref[b, :n] - out[b, :n]).abs().max() <= 1e-4


@pytest.mark.parametrize("locations", SUBSETS, ids=lambda s: "+".join(s) or "none")
@pytest.mark.parametrize("inference", ["expected", "hard"])
def test_pruned_model_equals_unpruned_in_eval_mode(locations, inference):
    model, _ = trained_like_model(locations, AdlSettings(inference=inference))
    pruned, widths = prune(model, CFG, adl_decisions(model))
    assert_exact(model, pruned)
    counts = analytic_params(CFG, widths, N_MELS, VOCAB)
    assert count_params(pruned) == sum(p.numel() for p in pruned.parameters()) == counts["total"]
    assert not any(name.endswith("beta") for name, _ in pruned.named_parameters())


@pytest.mark.parametrize("inference", ["expected", "hard"])
def test_exact_with_hard_concrete_gates(inference):
    model, layers = trained_like_model(["ffn", "mhsa", "conv"], AdlSettings(gate="hard_concrete", inference=inference))
    gates = torch.cat([layer.retention.detach() for layer in layers])
    assert (gates == 0).any() and (gates == 1).any() and ((gates > 0.5) & (gates < 1)).any()
    pruned, widths = prune(model, CFG, adl_decisions(model))
    assert_exact(model, pruned)
    assert count_params(pruned) == analytic_params(CFG, widths, N_MELS, VOCAB)["total"]


@pytest.mark.parametrize("front_end", ["conv2d", "conv1d"])
def test_exact_with_the_8x_front_end_and_a_bpe_sized_head(front_end):
    """The front end is never pruned; invariants 1 and 2 hold whatever its frame rate and the head's size."""
    cfg, vocab = dataclasses.replace(CFG, subsampling=8, front_end=front_end), 257
    model, _ = trained_like_model(["ffn", "mhsa", "conv"], cfg=cfg, vocab=vocab)
    pruned, widths = prune(model, cfg, adl_decisions(model))
    assert_exact(model, pruned)
    assert count_params(pruned) == analytic_params(cfg, widths, N_MELS, vocab)["total"] < count_params(model)
    assert torch.equal(pruned.encoder.subsampling.stages[1][0].weight, model.encoder.subsampling.stages[1][0].weight)


def test_every_unit_of_a_location_can_go():
    """Whole heads, a whole FFN and every conv channel of a block: still exact, counts say so."""
    model, _ = trained_like_model(["ffn", "mhsa", "conv"])
    block0, block1 = model.encoder.blocks
    block0.mhsa.value_gate.beta.data.fill_(-9.0)  # every head of block 0
    block0.ffn1.gate.beta.data.fill_(-9.0)  # the whole first FFN
    block0.conv.gate.beta.data.fill_(-9.0)  # every conv channel (their constant goes to the bias)
    block1.mhsa.value_gate.beta.data[:16].fill_(-9.0)  # heads 0 and 1 of block 1
    block1.mhsa.value_gate.beta.data[16:].fill_(5.0)
    block1.mhsa.query_gate.beta.data[16:24].fill_(-9.0)  # head 2 keeps values but loses every query
    pruned, widths = prune(model, CFG, adl_decisions(model))
    assert widths[0].ffn1 == 0 and widths[0].conv == 0 and widths[0].value_dims == []
    assert widths[1].value_dims == [8, 8] and widths[1].query_dims[0] == 0
    assert_exact(model, pruned)
    assert count_params(pruned) == analytic_params(CFG, widths, N_MELS, VOCAB)["total"]
    assert sum(p.numel() for p in pruned.encoder.blocks[0].mhsa.parameters()) == CFG.d_model  # its bias


def test_no_location_means_the_dense_model():
    torch.manual_seed(0)
    dense = ConformerCTC(CFG, N_MELS, VOCAB).eval()
    torch.manual_seed(0)
    with_none = ConformerCTC(CFG, N_MELS, VOCAB)
    assert attach_adls(with_none, [], AdlSettings()) == [] and adl_layers(with_none) == []
    with_none.eval()
    assert count_params(with_none) == count_params(dense)
    feats, lengths = padded_batch()
    assert torch.equal(dense(feats, lengths)[0], with_none(feats, lengths)[0])
    pruned, _ = prune(with_none, CFG, adl_decisions(with_none))
    assert count_params(pruned) == count_params(dense)


def test_parameter_counts_exclude_adl_logits():
    model, layers = trained_like_model(["ffn", "mhsa", "conv"])
    torch.manual_seed(0)
    dense = ConformerCTC(CFG, N_MELS, VOCAB)
    assert count_params(model) == count_params(dense)
    assert sum(p.numel() for p in model.parameters()) == count_params(dense) + sum(l.beta.numel() for l in layers)


def test_latency_is_timed_in_steady_state_with_the_models_taking_turns():
    """`steady_times`: per round, each call's warm-up runs go untimed, then its timed runs follow in a
    row (a deployed model's caches are warm); the rounds alternate the calls."""
    order = []

    def call(name):
        order.append(name)
        return sum(1 for n in order if n == name)  # how many times this call has run so far

    times = steady_times({"a": lambda: call("a"), "b": lambda: call("b")}, rounds=2, block=3, warmup=2)
    assert order == ["a"] * 5 + ["b"] * 5 + ["a"] * 5 + ["b"] * 5
    for name in ("a", "b"):
        assert [value for _, value in times[name]] == [3, 4, 5, 8, 9, 10]  # the timed runs only
        assert all(ms >= 0 for ms, _ in times[name])
