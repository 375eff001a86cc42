"""The Conformer-CTC encoder: output shapes, lengths and padding invariance."""
from __future__ import annotations

import torch

from study.config import ModelConfig
from study.model import ConformerCTC, output_lengths

TINY = ModelConfig(d_model=32, num_heads=4, ffn_dim=64, conv_channels=24, conv_kernel=5, num_blocks=2,
                   subsampling_channels=8, dropout=0.1)


def test_output_shapes_and_lengths():
    torch.manual_seed(0)
    model = ConformerCTC(TINY, n_mels=80, vocab_size=29).eval()
    feats = torch.randn(3, 101, 80)  # (B, T_in, n_mels)
    lengths = torch.tensor([101, 77, 40])
    log_probs, out_lengths = model(feats, lengths)
    assert log_probs.shape == (3, int(output_lengths(torch.tensor(101))), 29)  # (B, T, V)
    assert out_lengths.tolist() == output_lengths(lengths).tolist() == [24, 18, 9]
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(3, log_probs.shape[1]), atol=1e-5)


def test_padded_frames_never_change_real_outputs():
    torch.manual_seed(0)
    model = ConformerCTC(TINY, n_mels=80, vocab_size=29).eval()
    short = torch.randn(1, 60, 80)
    alone, n = model(short, torch.tensor([60]))
    padded = torch.cat([short, 100 * torch.randn(1, 45, 80)], dim=1)  # loud garbage in the padding
    other = torch.randn(1, 105, 80)
    batched, lengths = model(torch.cat([padded, other]), torch.tensor([60, 105]))
    assert lengths[0] == n[0]
    assert torch.allclose(batched[0, : n[0]], alone[0], atol=1e-5)


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = ConformerCTC(TINY, n_mels=80, vocab_size=29).train()
    log_probs, _ = model(torch.randn(2, 50, 80), torch.tensor([50, 30]))
    log_probs.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
