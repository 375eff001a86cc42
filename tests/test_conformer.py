"""The Conformer-CTC encoder: output shapes, lengths (4x and 8x front ends) and padding invariance."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from study.config import ModelConfig
from study.model import BlockWidths, ConformerCTC, dense_widths, output_lengths
from study.model.io import save_model

REPO = Path(__file__).resolve().parents[1]

TINY = ModelConfig(d_model=32, num_heads=4, ffn_dim=64, conv_channels=24, conv_kernel=5, num_blocks=2,
                   subsampling=4, front_end="conv2d", subsampling_channels=8, dropout=0.1)


def test_output_shapes_and_lengths():
    torch.manual_seed(0)
    model = ConformerCTC(TINY, n_mels=80, vocab_size=29).eval()
    feats = torch.randn(3, 101, 80)  # (B, T_in, n_mels)
    lengths = torch.tensor([101, 77, 40])
    log_probs, out_lengths = model(feats, lengths)
    assert log_probs.shape == (3, int(output_lengths(torch.tensor(101), 4)), 29)  # (B, T, V)
    assert out_lengths.tolist() == output_lengths(lengths, 4).tolist() == [24, 18, 9]
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(3, log_probs.shape[1]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("front_end", ["conv2d", "conv1d"])
def test_8x_front_end_lengths_match_real_outputs(front_end):
    """The length formula against the frames each utterance really gets when run alone."""
    cfg = dataclasses.replace(TINY, subsampling=8, front_end=front_end)
    torch.manual_seed(0)
    model = ConformerCTC(cfg, n_mels=80, vocab_size=29).eval()
    lengths = torch.tensor([101, 77, 40, 9, 8])
    log_probs, out_lengths = model(torch.randn(5, 101, 80), lengths)
    assert out_lengths.tolist() == output_lengths(lengths, 8).tolist() == [13, 10, 5, 2, 1]
    assert log_probs.shape[1] == 13
    for n, expected in zip(lengths.tolist(), out_lengths.tolist()):
        assert model(torch.randn(1, n, 80), torch.tensor([n]))[0].shape[1] == expected
    if front_end == "conv2d":
        assert model.encoder.subsampling.proj.in_features == 8 * 10  # 80 mel bins -> 40 -> 20 -> 10


@pytest.mark.parametrize("subsampling, front_end, input_norm", [(4, "conv2d", "none"), (8, "conv2d", "none"),
                                                              (8, "conv1d", "none"), (8, "conv1d", "utterance")])
def test_padded_frames_never_change_real_outputs(subsampling, front_end, input_norm):
    torch.manual_seed(0)
    cfg = dataclasses.replace(TINY, subsampling=subsampling, front_end=front_end, input_norm=input_norm)
    model = ConformerCTC(cfg, n_mels=80, vocab_size=29).eval()
    short = torch.randn(1, 60, 80)
    alone, n = model(short, torch.tensor([60]))
    padded = torch.cat([short, 100 * torch.randn(1, 45, 80)], dim=1)  # loud garbage in the padding
    other = torch.randn(1, 105, 80)
    batched, lengths = model(torch.cat([padded, other]), torch.tensor([60, 105]))
    assert lengths[0] == n[0]
    torch.testing.assert_close(batched[0, : n[0]], alone[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("input_norm", ["utterance_mean", "utterance"])
def test_utterance_normalisation_removes_a_recording_channels_colouring(input_norm):
    """A fixed per-bin offset (a microphone's colouring in log-mel) leaves the output unchanged; with
    variance normalisation a per-bin gain does too. Each bin is zero-mean over the real frames only."""
    from study.model.conformer import utterance_norm
    torch.manual_seed(0)
    model = ConformerCTC(dataclasses.replace(TINY, input_norm=input_norm), n_mels=80, vocab_size=29).eval()
    feats, lengths = torch.randn(2, 90, 80), torch.tensor([90, 50])
    colour = torch.randn(1, 1, 80) * 3
    gain = torch.rand(1, 1, 80) + 0.5 if input_norm == "utterance" else 1.0
    plain, coloured = model(feats, lengths)[0], model(feats * gain + colour, lengths)[0]
    torch.testing.assert_close(plain, coloured, rtol=1e-5, atol=1e-4)
    normed = utterance_norm(feats + colour, lengths, variance=input_norm == "utterance")  # (B, T, F)
    torch.testing.assert_close(normed[1, :50].mean(0), torch.zeros(80), rtol=1e-5, atol=1e-5)
    assert normed[1, 50:].abs().max() == 0
    if input_norm == "utterance":
        torch.testing.assert_close(normed[1, :50].pow(2).mean(0), torch.ones(80), rtol=1e-5, atol=1e-3)


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = ConformerCTC(TINY, n_mels=80, vocab_size=29).train()
    log_probs, _ = model(torch.randn(2, 50, 80), torch.tensor([50, 30]))
    log_probs.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_a_model_file_from_before_the_front_end_knob_loads_as_conv2d(tmp_path):
    cfg = dataclasses.replace(TINY, subsampling=8)
    model = ConformerCTC(cfg, n_mels=80, vocab_size=29).eval()
    save_model(tmp_path / "old.pt", cfg, model, dense_widths(cfg))
    saved = torch.load(tmp_path / "old.pt", weights_only=True)
    del saved["model_config"]["front_end"]
    torch.save(saved, tmp_path / "old.pt")
    from study.model.io import load_model
    loaded, _ = load_model(tmp_path / "old.pt")
    assert type(loaded.encoder.subsampling).__name__ == "DepthwiseSubsampling"


def test_load_model_needs_only_torch_and_the_model_code(tmp_path):
    """An exported model reloads in a process that never imports data, training, method or MLflow code."""
    torch.manual_seed(0)
    model = ConformerCTC(TINY, n_mels=80, vocab_size=29).eval()
    save_model(tmp_path / "model.pt", TINY, model, dense_widths(TINY))
    script = f"""
import sys
from study.model.io import load_model
model, saved = load_model({str(tmp_path / 'model.pt')!r})
loaded = sorted(m for m in sys.modules if m.split('.')[0] in ("soundfile", "mlflow", "espeakng_loader", "optuna")
                or m.startswith(("study.data", "study.training", "study.method", "study.tracking", "study.sweep")))
print(sum(p.numel() for p in model.parameters()), loaded)
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split(maxsplit=1) == [str(sum(p.numel() for p in model.parameters())), "[]\n"]


def test_unequal_heads_run_inference_on_padded_weights_exactly_and_follow_weight_changes():
    """Without autograd, a pruned attention multiplies by zero-padded copies of its compact weights
    instead of scattering activations: the same outputs, rebuilt when a weight changes."""
    from study.model.conformer import BlockWidths
    torch.manual_seed(0)
    widths = [BlockWidths(64, 50, query_dims=[8, 3, 5], value_dims=[2, 8, 7], conv=20),
              BlockWidths(10, 64, query_dims=[0, 8], value_dims=[4, 1], conv=24)]
    model = ConformerCTC(TINY, n_mels=80, vocab_size=29, widths=widths).eval()
    feats, lengths = torch.randn(2, 90, 80), torch.tensor([90, 61])
    with_autograd = model(feats, lengths)[0]  # the scatter path (parameters require grad)
    with torch.no_grad():
        padded = model(feats, lengths)[0]
        assert all(hasattr(b.mhsa, "_padded_key") for b in model.encoder.blocks)
        torch.testing.assert_close(padded, with_autograd, rtol=1e-5, atol=1e-6)
        model.encoder.blocks[1].mhsa.wv.weight.mul_(-2.0)
        changed = model(feats, lengths)[0]
    torch.testing.assert_close(changed, model(feats, lengths)[0], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(changed, padded, atol=1e-3)


def test_uniform_heads_copy_gives_the_same_outputs_with_equal_heads():
    """The deployment copy (study/export.py) holds unequal heads as zero-padded equal ones, and heads
    without query units as the mean of their values: the same outputs with autograd on (the path a
    compiled or exported graph takes), the original untouched."""
    from study.model.conformer import BlockWidths, with_uniform_heads
    torch.manual_seed(0)
    widths = [BlockWidths(64, 50, query_dims=[8, 3, 5], value_dims=[2, 8, 7], conv=20),
              BlockWidths(10, 64, query_dims=[0, 8], value_dims=[4, 1], conv=24)]
    model = ConformerCTC(TINY, n_mels=80, vocab_size=29, widths=widths).eval()
    feats, lengths = torch.randn(2, 90, 80), torch.tensor([90, 61])
    uniform = with_uniform_heads(model)
    assert all(b.mhsa.uniform and b.mhsa.wq.out_features == b.mhsa.num_heads * b.mhsa.head_size
               for b in uniform.encoder.blocks)
    assert not any(b.mhsa.uniform for b in model.encoder.blocks)
    # block 1's first head has values but no query units: it attends uniformly, so it becomes the mean of
    # its values (pooled_heads) and SDPA runs over the other head alone
    assert uniform.encoder.blocks[0].mhsa.pooled_heads is None and uniform.encoder.blocks[0].mhsa.num_heads == 3
    assert uniform.encoder.blocks[1].mhsa.pooled_heads is not None and uniform.encoder.blocks[1].mhsa.num_heads == 1
    expected, expected_lengths = model(feats, lengths)
    got, got_lengths = uniform(feats, lengths)
    assert torch.equal(got_lengths, expected_lengths)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def _shipped_model_settings() -> dict[str, tuple[ModelConfig, int]]:
    """Every distinct model of the shipped experiments' grid points (and their base settings), with its mel
    bands: {experiment file and setting: (model settings, n_mels)}."""
    from study.sweep.experiment_file import load_experiment
    found, seen = {}, set()
    for path in sorted((Path(__file__).resolve().parents[1] / "experiments").glob("*.toml")):
        experiment = load_experiment(path)
        for point in [None, *(experiment.points() if experiment.spec.mode == "grid" else [])]:
            cfg = experiment.config(point)
            if repr((cfg.model, cfg.features.n_mels)) not in seen:
                seen.add(repr((cfg.model, cfg.features.n_mels)))
                found[f"{path.name}: {point.arm if point else 'base'}"] = (cfg.model, cfg.features.n_mels)
    return found


SHIPPED = _shipped_model_settings()


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_every_shipped_experiments_model_runs_forward_with_its_shapes(name):
    model_cfg, n_mels = SHIPPED[name]
    model = ConformerCTC(model_cfg, n_mels=n_mels, vocab_size=129).eval()
    feats = torch.randn(2, 160, n_mels)  # (B, T_in, n_mels): 1.6 s of 10 ms frames
    lengths = torch.tensor([160, 97])
    with torch.inference_mode():
        log_probs, out_lengths = model(feats, lengths)
    expected = output_lengths(lengths, model_cfg.subsampling)
    assert log_probs.shape == (2, int(expected[0]), 129)  # (B, T, V)
    assert out_lengths.tolist() == expected.tolist()
    assert torch.isfinite(log_probs[1, : int(expected[1])]).all()


def test_evaluation_after_training_uses_the_trained_attention_weights():
    """A model with unequal heads keeps padded copies of its projections for inference; the fused AdamW the
    trainer uses does not bump the weights' version counters, so the copies must be dropped by training."""
    cfg = ModelConfig(d_model=32, num_heads=2, ffn_dim=64, conv_channels=32, conv_kernel=5, num_blocks=1,
                      subsampling=4, front_end="conv2d", subsampling_channels=8)
    widths = [BlockWidths(64, 64, [16, 8], [16, 4], 32)]  # unequal heads: the padded inference path
    torch.manual_seed(0)
    model = ConformerCTC(cfg, 80, 12, widths)
    feats, lengths = torch.randn(2, 60, 80), torch.tensor([60, 45])  # (B, T, F)
    with torch.inference_mode():
        model.eval()(feats, lengths)  # builds the padded copies
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)
    model.train()
    model(feats, lengths)[0].mean().backward()
    optimizer.step()
    fresh = ConformerCTC(cfg, 80, 12, widths)
    fresh.load_state_dict(model.state_dict())
    with torch.inference_mode():
        torch.testing.assert_close(model.eval()(feats, lengths)[0], fresh.eval()(feats, lengths)[0])
