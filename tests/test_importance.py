"""The structured baselines beyond weight magnitude: weight-times-activation and first-order Taylor unit
scores from a calibration sample, ranked and pruned exactly as magnitude pruning's norms are."""
from __future__ import annotations

import mlflow
import pytest
import torch

from study.method.importance import activation_scores, taylor_scores
from study.trial import run_trial
from study.trial_context import build_model


@pytest.fixture
def model(tiny_config):
    torch.manual_seed(0)
    return build_model(tiny_config, vocab_size=12)


def test_activation_scores_count_real_frames_only(model, tiny_config):
    """A batch of a long and a short utterance scores as the two utterances alone do (squared activation
    norms add up over frames): the padded frames, whose activations are not zero (biases), do not count.
    A unit that never fires scores 0."""
    block = model.encoder.blocks[0]
    with torch.no_grad():
        block.ffn1.w1.weight[3] = 0.0
        block.ffn1.w1.bias[3] = 0.0  # silu(0) = 0: FFN unit 3 never fires
        block.mhsa.wq.weight[1] = 0.0
        block.mhsa.wq.bias[1] = 0.0  # query dimension 1 is always 0
    feats = torch.randn(2, 80, tiny_config.features.n_mels)  # (B, T, F)
    feats[1, 50:] = 0.0  # zero padding, as batches are padded
    lengths = torch.tensor([80, 50])
    together = activation_scores(model, [(feats, lengths)])
    alone = [activation_scores(model, [(feats[i:i + 1, :n], lengths[i:i + 1])]) for i, n in enumerate((80, 50))]
    for g in ("ffn1", "ffn2", "value", "conv"):  # query: ||q_i|| ||k_i||, a product of two such norms
        torch.testing.assert_close(together[0][g].pow(2), alone[0][0][g].pow(2) + alone[1][0][g].pow(2), rtol=1e-4, atol=1e-6)
    assert together[0]["ffn1"][3] == 0 and together[0]["query"][1] == 0
    assert (together[0]["ffn1"][:3] > 0).all() and model.training  # the mode it was in


def test_taylor_scores_sum_weight_times_gradient_over_each_units_weights(model, tiny_config):
    feats, lengths = torch.randn(2, 80, tiny_config.features.n_mels), torch.tensor([80, 61])
    targets, target_lengths = torch.tensor([[1, 2, 3], [4, 5, 0]]), torch.tensor([3, 2])
    ctc = torch.nn.CTCLoss(zero_infinity=True)
    scores = taylor_scores(model, [(feats, lengths, targets, target_lengths)], ctc)
    model.eval()
    log_probs, out_lengths = model(feats, lengths)
    ctc(log_probs.transpose(0, 1), targets, out_lengths, target_lengths).backward()
    ffn = model.encoder.blocks[0].ffn2
    unit = 5  # FFN unit 5 owns row 5 of W1 and column 5 of W2
    by_hand = (ffn.w1.weight[unit] * ffn.w1.weight.grad[unit]).abs().sum() + \
        (ffn.w2.weight[:, unit] * ffn.w2.weight.grad[:, unit]).abs().sum()
    torch.testing.assert_close(scores[0]["ffn2"][unit], by_hand.detach(), rtol=1e-4, atol=1e-8)
    conv = model.encoder.blocks[0].conv
    assert scores[0]["conv"].shape == (conv.depthwise.in_channels,) and (scores[0]["conv"] > 0).all()


def test_the_calibrated_baselines_prune_the_dense_run_to_the_budget(tiny_config, tracking_uri, tmp_path):
    tiny_config.prune.target_reduction, tiny_config.prune.calibration_utterances = 0.3, 8
    for method in ("activation_structured", "taylor_structured"):
        tiny_config.method = method
        run_trial(tiny_config, tracking_uri, runs_dir=tmp_path)
    client = mlflow.MlflowClient(tracking_uri)
    runs = {r.data.tags["method"]: r for r in client.search_runs([client.get_experiment_by_name("tiny").experiment_id])}
    assert set(runs) == {"dense", "activation_structured", "taylor_structured"}  # one dense run for both
    for method in ("activation_structured", "taylor_structured"):
        run = runs[method]
        assert run.info.status == "FINISHED" and run.data.tags["source_dense_run_id"] == runs["dense"].info.run_id
        assert 0.29 <= run.data.metrics["params/reduction"] <= 0.33
