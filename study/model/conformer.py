"""A Conformer-CTC encoder written for pruning: every prunable width is an ordinary Linear/Conv.

Block (macaron): x += 0.5*FFN1(x); x += MHSA(x); x += Conv(x); x += 0.5*FFN2(x); x = LN(x).
Positions: absolute sinusoidal encoding added once after the front end, so query/key dimensions
stay independent of each other (needed for exact pruning of attention dimensions).
Each module has a `gate` seam (nn.Identity here) where adaptive dropout layers go.
Shapes: B batch, T frames after subsampling, D d_model, F ffn_dim, C conv channels, H heads.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from study.config import ModelConfig


def output_lengths(lengths: torch.Tensor) -> torch.Tensor:
    """Frames after the two stride-2, kernel-3 convolutions of the front end."""
    return ((lengths - 1) // 2 - 1) // 2


def padding_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B, T) bool, True on real frames."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


class Subsampling(nn.Module):
    """Conv2d x2 (stride 2 each): (B, T_in, n_mels) -> (B, T_in/4, D)."""

    def __init__(self, n_mels: int, channels: int, d_model: int):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, channels, 3, stride=2), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=2), nn.ReLU())
        self.proj = nn.Linear(channels * (((n_mels - 1) // 2 - 1) // 2), d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x.unsqueeze(1))  # (B, C, T/4, F/4)
        b, c, t, f = x.shape
        return self.proj(x.permute(0, 2, 1, 3).reshape(b, t, c * f))


def sinusoidal_positions(length: int, dim: int, device: torch.device) -> torch.Tensor:
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, device=device)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return table  # (T, D)


class FeedForward(nn.Module):
    """LN -> Linear(D, F) -> Swish -> gate(F) -> Dropout -> Linear(F, D) -> Dropout."""

    def __init__(self, d_model: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.w1 = nn.Linear(d_model, ffn_dim)
        self.gate = nn.Identity()
        self.w2 = nn.Linear(ffn_dim, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.dropout(self.gate(F.silu(self.w1(self.norm(x)))))  # (B, T, F)
        return self.dropout(self.w2(hidden))


class SelfAttention(nn.Module):
    """LN -> q, k, v projections (gates on q and v) -> per-head SDPA -> output projection."""

    def __init__(self, d_model: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, d_model // num_heads
        self.norm = nn.LayerNorm(d_model)
        self.wq = nn.Linear(d_model, d_model)
        self.wk = nn.Linear(d_model, d_model)
        self.wv = nn.Linear(d_model, d_model)
        self.query_gate = nn.Identity()
        self.value_gate = nn.Identity()
        self.wo = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)
        self.attn_dropout = dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        x = self.norm(x)
        q = self.query_gate(self.wq(x)).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, dh)
        k = self.wk(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.value_gate(self.wv(x)).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        attn = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask[:, None, None, :],  # keys only: padded keys get no weight
            dropout_p=self.attn_dropout if self.training else 0.0, scale=self.head_dim ** -0.5)
        return self.dropout(self.wo(attn.transpose(1, 2).reshape(b, t, -1)))


class ConvModule(nn.Module):
    """LN -> Linear(D, 2C) -> GLU -> gate(C) -> depthwise Conv1d -> BatchNorm -> Swish -> Linear(C, D)."""

    def __init__(self, d_model: int, channels: int, kernel: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.pointwise_in = nn.Linear(d_model, 2 * channels)
        self.gate = nn.Identity()
        self.depthwise = nn.Conv1d(channels, channels, kernel, padding=kernel // 2, groups=channels)
        self.batch_norm = nn.BatchNorm1d(channels)
        self.pointwise_out = nn.Linear(channels, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.gate(F.glu(self.pointwise_in(self.norm(x)), dim=-1))  # (B, T, C)
        h = h.masked_fill(~mask[..., None], 0.0)  # padded frames must not leak into real ones
        h = self.depthwise(h.transpose(1, 2))  # (B, C, T)
        h = F.silu(self.batch_norm(h)).transpose(1, 2)
        return self.dropout(self.pointwise_out(h))


class ConformerBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ffn1 = FeedForward(cfg.d_model, cfg.ffn_dim, cfg.dropout)
        self.mhsa = SelfAttention(cfg.d_model, cfg.num_heads, cfg.dropout)
        self.conv = ConvModule(cfg.d_model, cfg.conv_channels, cfg.conv_kernel, cfg.dropout)
        self.ffn2 = FeedForward(cfg.d_model, cfg.ffn_dim, cfg.dropout)
        self.norm = nn.LayerNorm(cfg.d_model)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + 0.5 * self.ffn1(x)
        x = x + self.mhsa(x, mask)
        x = x + self.conv(x, mask)
        x = x + 0.5 * self.ffn2(x)
        return self.norm(x)


class ConformerEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig, n_mels: int):
        super().__init__()
        self.subsampling = Subsampling(n_mels, cfg.subsampling_channels, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(ConformerBlock(cfg) for _ in range(cfg.num_blocks))

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T_in, n_mels), (B,) -> (B, T, D), (B,)."""
        x = self.subsampling(feats)
        lengths = output_lengths(lengths)
        mask = padding_mask(lengths, x.shape[1])
        x = self.dropout(x + sinusoidal_positions(x.shape[1], x.shape[2], x.device))
        for block in self.blocks:
            x = block(x, mask)
        return x, lengths


class ConformerCTC(nn.Module):
    def __init__(self, cfg: ModelConfig, n_mels: int, vocab_size: int):
        super().__init__()
        self.encoder = ConformerEncoder(cfg, n_mels)
        self.head = nn.Linear(cfg.d_model, vocab_size)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns CTC log-probabilities (B, T, V) and output lengths (B,)."""
        x, lengths = self.encoder(feats, lengths)
        return self.head(x).log_softmax(dim=-1), lengths
