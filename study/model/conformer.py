"""A Conformer-CTC encoder written for pruning: every prunable width is an ordinary Linear/Conv.

Block (macaron): x += 0.5*FFN1(x); x += MHSA(x); x += Conv(x); x += 0.5*FFN2(x); x = LN(x).
Positions: absolute sinusoidal encoding added once after the front end, so query/key dimensions
stay independent of each other (needed for exact pruning of attention dimensions).
Each module has a `gate` seam (nn.Identity here) where adaptive dropout layers go.
Shapes: B batch, T frames after subsampling, D d_model, F ffn_dim, C conv channels, H heads.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from study.config import ModelConfig


@dataclass
class BlockWidths:
    """The widths of one block; a pruned model has its own, the dense model the configured ones.

    A zero width (or no heads) turns that module into a ConstantOutput: all that remains of it is
    the constant it adds to the residual stream.
    """
    ffn1: int
    ffn2: int
    query_dims: list[int] = field(default_factory=list)  # per kept head: query/key dimensions
    value_dims: list[int] = field(default_factory=list)  # per kept head: value dimensions (all > 0)
    conv: int = 0

    @classmethod
    def dense(cls, cfg: ModelConfig) -> "BlockWidths":
        head = cfg.d_model // cfg.num_heads
        return cls(cfg.ffn_dim, cfg.ffn_dim, [head] * cfg.num_heads, [head] * cfg.num_heads, cfg.conv_channels)


def dense_widths(cfg: ModelConfig) -> list[BlockWidths]:
    """The widths of every block of the unpruned model."""
    return [BlockWidths.dense(cfg)] * cfg.num_blocks


class Dropout(nn.Module):
    """Inverted dropout with a mask from torch.rand: about 2x faster than nn.Dropout's bernoulli_
    on the CPU (the RNG dominates there); same distribution and expected value."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand(x.shape, device=x.device) >= self.p
        return x * keep * (1.0 / (1.0 - self.p))  # bool promotes to x.dtype without a copy


class ConstantOutput(nn.Module):
    """What is left of a fully pruned module: the bias it adds at every frame."""

    def __init__(self, d_model: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(d_model))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return torch.zeros_like(x) + self.bias  # a fresh tensor: autograd and FLOP hooks expect one


def output_lengths(lengths: torch.Tensor, factor: int) -> torch.Tensor:
    """Frames after the front end: two stride-2, kernel-3 convolutions without padding (factor 4), or
    three with padding 1 (factor 8)."""
    if factor == 4:
        return ((lengths - 1) // 2 - 1) // 2
    for _ in range(3):
        lengths = (lengths - 1) // 2 + 1
    return lengths


def front_end_bins(n_mels: int, factor: int) -> int:
    """Frequency bins left after the front end's convolutions (they stride over frequency too)."""
    return int(output_lengths(torch.tensor(n_mels), factor))


def padding_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B, T) bool, True on real frames."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def utterance_norm(x: torch.Tensor, lengths: torch.Tensor, variance: bool) -> torch.Tensor:
    """(B, T, F) -> each bin minus its mean over the utterance's own frames (and divided by their standard
    deviation with `variance`): cepstral mean (and variance) normalisation, which removes a recording
    channel's fixed colouring. Padded frames stay zero, so the result does not depend on batch padding."""
    mask = padding_mask(lengths, x.shape[1])
    centred = (x - masked_mean(x, mask)) * mask[:, :, None].to(x.dtype)
    if not variance:
        return centred
    return centred * torch.rsqrt(masked_mean(centred.pow(2), mask) + 1e-5)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, D), (B, T) bool -> (B, 1, D): the mean over each utterance's real frames (0 with none)."""
    weights = mask.to(x.dtype)[..., None]  # (B, T, 1)
    return (x * weights).sum(1, keepdim=True) / weights.sum(1, keepdim=True).clamp_min(1)


def project_frames(x: torch.Tensor, proj: nn.Linear) -> torch.Tensor:
    """(B, C, T', F') front-end maps -> (B, T', D): each frame's channels and bins, projected to d_model."""
    b, c, t, f = x.shape
    return proj(x.permute(0, 2, 1, 3).reshape(b, t, c * f))


class Subsampling(nn.Module):
    """Conv2d x2 (stride 2 each): (B, T_in, n_mels) -> (B, T_in/4, D)."""
    factor = 4

    def __init__(self, n_mels: int, channels: int, d_model: int):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, channels, 3, stride=2), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=2), nn.ReLU())
        self.proj = nn.Linear(channels * front_end_bins(n_mels, 4), d_model)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = self.conv(x.unsqueeze(1))  # (B, C, T/4, F/4); no padding, so no frame reads past its utterance
        return project_frames(x, self.proj)


class DepthwiseSubsampling(nn.Module):
    """8x in the style of FastConformer: Conv2d(stride 2), then twice depthwise Conv2d(stride 2) +
    pointwise Conv2d, ReLU after each stage: (B, T_in, n_mels) -> (B, T_in/8, D). Frames past each
    utterance's end are zeroed after every stage, so the output does not depend on batch padding."""
    factor = 8

    def __init__(self, n_mels: int, channels: int, d_model: int):
        super().__init__()
        self.stages = nn.ModuleList([
            nn.Conv2d(1, channels, 3, stride=2, padding=1),
            nn.Sequential(nn.Conv2d(channels, channels, 3, stride=2, padding=1, groups=channels),
                          nn.Conv2d(channels, channels, 1)),
            nn.Sequential(nn.Conv2d(channels, channels, 3, stride=2, padding=1, groups=channels),
                          nn.Conv2d(channels, channels, 1))])
        self.proj = nn.Linear(channels * front_end_bins(n_mels, 8), d_model)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = (x * padding_mask(lengths, x.shape[1])[:, :, None].to(x.dtype)).unsqueeze(1)  # (B, 1, T, F)
        for stage in self.stages:
            x = torch.relu(stage(x))
            lengths = (lengths - 1) // 2 + 1
            x = x * padding_mask(lengths, x.shape[2])[:, None, :, None].to(x.dtype)
        return project_frames(x, self.proj)  # x: (B, C, T/8, F/8)


class FoldedSubsampling(nn.Module):
    """8x with the mel bins folded into channels: Conv1d(n_mels -> C, stride 2), then twice depthwise
    Conv1d(stride 2) + pointwise Conv1d, ReLU after each stage, then Linear(C -> D):
    (B, T_in, n_mels) -> (B, T_in/8, D). Same strides, padding and length formula as the 2-D 8x front
    end at about a sixth of its multiply-adds; on the CPU that front end took half of a training step.
    Frames past each utterance's end are zeroed after every stage (padding invariance)."""
    factor = 8

    def __init__(self, n_mels: int, channels: int, d_model: int):
        super().__init__()
        self.stages = nn.ModuleList([
            nn.Conv1d(n_mels, channels, 3, stride=2, padding=1),
            nn.Sequential(nn.Conv1d(channels, channels, 3, stride=2, padding=1, groups=channels),
                          nn.Conv1d(channels, channels, 1)),
            nn.Sequential(nn.Conv1d(channels, channels, 3, stride=2, padding=1, groups=channels),
                          nn.Conv1d(channels, channels, 1))])
        self.proj = nn.Linear(channels, d_model)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = (x * padding_mask(lengths, x.shape[1])[:, :, None].to(x.dtype)).transpose(1, 2)  # (B, F, T)
        for stage in self.stages:
            x = torch.relu(stage(x))
            lengths = (lengths - 1) // 2 + 1
            x = x * padding_mask(lengths, x.shape[2])[:, None, :].to(x.dtype)
        return self.proj(x.transpose(1, 2))  # x: (B, C, T/8)


FRONT_ENDS = {("conv2d", 4): Subsampling, ("conv2d", 8): DepthwiseSubsampling, ("conv1d", 8): FoldedSubsampling}


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
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.dropout(self.gate(F.silu(self.w1(self.norm(x)))))  # (B, T, F)
        return self.dropout(self.w2(hidden))


class SelfAttention(nn.Module):
    """LN -> q, k, v projections (gates on q and v) -> per-head SDPA -> output projection.

    Heads may have unequal query/key and value sizes after pruning: the projections stay compact
    and are scattered into a zero-padded (B, H, T, max) layout for SDPA; zero query/key dimensions
    add nothing to the scores and padded value dimensions are dropped, so the result is exact.
    The softmax scale is the unpruned model's 1/sqrt(d_model / num_heads).
    """

    def __init__(self, d_model: int, query_dims: list[int], value_dims: list[int], scale: float, dropout: float,
                 attention_dropout: float = 0.0):
        super().__init__()
        self.num_heads, self.scale = len(value_dims), scale
        self.norm = nn.LayerNorm(d_model)
        self.wq = nn.Linear(d_model, sum(query_dims))
        self.wk = nn.Linear(d_model, sum(query_dims))
        self.wv = nn.Linear(d_model, sum(value_dims))
        self.query_gate = nn.Identity()
        self.value_gate = nn.Identity()
        self.wo = nn.Linear(sum(value_dims), d_model)
        self.pooled_heads: nn.Linear | None = None  # set by with_uniform_heads (deployment copies only)
        self.dropout = Dropout(dropout)
        self.attn_dropout = attention_dropout
        self.uniform = len(set(query_dims) | set(value_dims)) == 1
        # One padded head size for q, k and v: SDPA's fused CPU kernel needs them equal.
        self.head_size = max(query_dims + value_dims)
        # Positions of the compact units in the padded (H * head_size) layout; derived, so not saved.
        self.register_buffer("q_index", _padded_index(query_dims, self.head_size), persistent=False)
        self.register_buffer("v_index", _padded_index(value_dims, self.head_size), persistent=False)

    def _padded(self, x: torch.Tensor, dim: int, index: torch.Tensor) -> torch.Tensor:
        """`x` with its compact units along `dim` scattered into the zero-padded H * head_size layout."""
        shape = list(x.shape)
        shape[dim] = self.num_heads * self.head_size
        return x.new_zeros(shape).index_copy(dim, index, x)

    def _heads(self, x: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
        """(B, T, sum dims) -> (B, H, T, size), zero-padded per head."""
        b, t, _ = x.shape
        if not self.uniform:
            x = self._padded(x, 2, index)
        return x.view(b, t, self.num_heads, size).transpose(1, 2)

    def _padded_weights(self) -> tuple[torch.Tensor, ...]:
        """The projections with zero rows (and the output projection with zero columns) at the padded head
        positions, so one matrix product gives the padded (B, T, H * head_size) layout: inference of a
        model with unequal heads without scattering activations (which cost more than pruning saved at
        batch 1). Derived from the compact weights, never saved; rebuilt when any of them changes."""
        layers = (self.wq, self.wk, self.wv, self.wo)
        key = tuple(t._version for layer in layers for t in (layer.weight, layer.bias)) + (self.wq.weight.device,)
        if getattr(self, "_padded_key", None) != key:
            projections = ((self.wq, self.q_index), (self.wk, self.q_index), (self.wv, self.v_index))
            rows = [self._padded(t, 0, index) for layer, index in projections for t in (layer.weight, layer.bias)]
            self._padded_cache = (*rows, self._padded(self.wo.weight, 1, self.v_index))  # wo: padded columns
            self._padded_key = key
        return self._padded_cache

    def train(self, mode: bool = True) -> "SelfAttention":
        # Training changes the weights, and the fused AdamW the trainer uses updates them without bumping
        # their version counters: the padded copies are dropped here, or evaluation after fine-tuning ran
        # on the projections of the first evaluation (a fine-tuned pruned model's logged WER was not the
        # saved model's).
        self._padded_key = None
        return super().train(mode)

    def _padded_inference(self) -> bool:
        return (not self.uniform and not self.training and not torch.is_grad_enabled()
                and isinstance(self.query_gate, nn.Identity) and isinstance(self.value_gate, nn.Identity)
                and not torch.compiler.is_compiling() and not torch.jit.is_tracing())

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        x = self.norm(x)
        if self._padded_inference():
            wq, bq, wk, bk, wv, bv, wo = self._padded_weights()
            q, k, v = (F.linear(x, w, bias).view(b, t, self.num_heads, self.head_size).transpose(1, 2)
                       for w, bias in ((wq, bq), (wk, bk), (wv, bv)))  # (B, H, T, head_size) each
            attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :], scale=self.scale)
            return self._output(F.linear(attn.transpose(1, 2).reshape(b, t, -1), wo, self.wo.bias), x, mask)
        q = self._heads(self.query_gate(self.wq(x)), self.q_index, self.head_size)
        k = self._heads(self.wk(x), self.q_index, self.head_size)
        v = self._heads(self.value_gate(self.wv(x)), self.v_index, self.head_size)
        attn = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask[:, None, None, :],  # keys only: padded keys get no weight
            dropout_p=self.attn_dropout if self.training else 0.0, scale=self.scale)  # (B, H, T, head_size)
        attn = attn.transpose(1, 2).reshape(b, t, -1)
        if not self.uniform:
            attn = attn.index_select(2, self.v_index)
        return self._output(self.wo(attn), x, mask)

    def _output(self, out: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.pooled_heads is not None:
            out = out + self.pooled_heads(masked_mean(x, mask))  # (B, 1, D): the same for every frame
        return self.dropout(out)


def with_uniform_heads(model: nn.Module) -> nn.Module:
    """A copy for deployment whose attention layers with unequal heads hold their zero-padded projections
    as plain weights: the same outputs, and every runtime sees the graph of a dense model with smaller
    heads. (The padded-weights path above serves eager inference only; a compiled or exported graph
    takes the scatter path, whose gathers and extra transposes cost more than pruning saved.)
    Heads that lost every query unit score every key 0, so they attend uniformly: their output is the
    mean of their values over the utterance, which the copy computes as one (D, D) product of the mean
    frame (`pooled_heads`) instead of paying a softmax over T x T scores per head."""
    model = copy.deepcopy(model)
    for block in model.encoder.blocks:
        if isinstance(block.mhsa, SelfAttention) and not block.mhsa.uniform:
            block.mhsa = _uniform_heads(_without_query_less_heads(block.mhsa))
    return model


@torch.no_grad()
def _without_query_less_heads(attention: SelfAttention) -> SelfAttention:
    """`attention` with its heads that have value units but no query units moved into `pooled_heads`
    (kept as they are when no head has query units: SDPA needs one)."""
    # the head of each compact unit, from its position in the padded (H * head_size) layout
    query_heads = torch.div(attention.q_index, attention.head_size, rounding_mode="floor")
    value_heads = torch.div(attention.v_index, attention.head_size, rounding_mode="floor")
    scored = sorted(set(query_heads.tolist()))
    if not scored or len(scored) == attention.num_heads:
        return attention
    kept = torch.isin(value_heads, torch.tensor(scored, device=value_heads.device))
    keep, pool = kept.nonzero().flatten(), (~kept).nonzero().flatten()
    query_dims = [int((query_heads == h).sum()) for h in scored]
    value_dims = [int((value_heads == h).sum()) for h in scored]
    wv, wo = attention.wv, attention.wo
    smaller = SelfAttention(wv.in_features, query_dims, value_dims, attention.scale, 0.0,
                            attention.attn_dropout).to(wv.weight.device).eval()
    smaller.norm.load_state_dict(attention.norm.state_dict())
    smaller.wq.load_state_dict(attention.wq.state_dict())
    smaller.wk.load_state_dict(attention.wk.state_dict())
    smaller.wv = _linear_of(wv.weight[keep], wv.bias[keep])
    smaller.wo = _linear_of(wo.weight[:, keep], wo.bias)
    smaller.dropout = attention.dropout
    # mean_t(wo_p (wv_p x_t + bv_p)) = (wo_p wv_p) mean_t(x_t) + wo_p bv_p
    smaller.pooled_heads = _linear_of(wo.weight[:, pool] @ wv.weight[pool], wo.weight[:, pool] @ wv.bias[pool])
    return smaller


def _uniform_heads(attention: SelfAttention) -> SelfAttention:
    if attention.uniform:
        return attention
    wq, bq, wk, bk, wv, bv, wo = attention._padded_weights()
    for name, weight, bias in (("wq", wq, bq), ("wk", wk, bk), ("wv", wv, bv), ("wo", wo, attention.wo.bias)):
        setattr(attention, name, _linear_of(weight, bias))
    attention.uniform = True
    for index in ("q_index", "v_index"):
        setattr(attention, index, torch.arange(attention.num_heads * attention.head_size, device=wq.device))
    for cached in ("_padded_key", "_padded_cache"):
        attention.__dict__.pop(cached, None)
    return attention


@torch.no_grad()
def _linear_of(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    """An nn.Linear holding copies of `weight` (out, in) and `bias` (out,), on their device and dtype."""
    layer = nn.Linear(weight.shape[1], weight.shape[0], device=weight.device, dtype=weight.dtype)
    layer.weight.copy_(weight)
    layer.bias.copy_(bias)
    return layer


def _padded_index(dims: list[int], size: int) -> torch.Tensor:
    return torch.tensor([h * size + j for h, n in enumerate(dims) for j in range(n)], dtype=torch.long)


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
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.gate(F.glu(self.pointwise_in(self.norm(x)), dim=-1))  # (B, T, C)
        h = h.masked_fill(~mask[..., None], 0.0)  # padded frames must not leak into real ones
        h = self.depthwise(h.transpose(1, 2))  # (B, C, T)
        h = F.silu(self.batch_norm(h)).transpose(1, 2)
        return self.dropout(self.pointwise_out(h))


class ConformerBlock(nn.Module):
    def __init__(self, cfg: ModelConfig, widths: BlockWidths | None = None):
        super().__init__()
        w = widths or BlockWidths.dense(cfg)
        d, p = cfg.d_model, cfg.dropout
        self.ffn1 = FeedForward(d, w.ffn1, p) if w.ffn1 else ConstantOutput(d)
        self.mhsa = (SelfAttention(d, w.query_dims, w.value_dims, (d // cfg.num_heads) ** -0.5, p, cfg.attention_dropout)
                     if w.value_dims else ConstantOutput(d))
        self.conv = ConvModule(d, w.conv, cfg.conv_kernel, p) if w.conv else ConstantOutput(d)
        self.ffn2 = FeedForward(d, w.ffn2, p) if w.ffn2 else ConstantOutput(d)
        self.norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + 0.5 * self.ffn1(x)
        x = x + self.mhsa(x, mask)
        x = x + self.conv(x, mask)
        x = x + 0.5 * self.ffn2(x)
        return self.norm(x)


class ConformerEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig, n_mels: int, widths: list[BlockWidths] | None = None):
        super().__init__()
        if widths is not None and len(widths) != cfg.num_blocks:
            raise ValueError(f"{len(widths)} block widths for {cfg.num_blocks} blocks")
        self.input_norm = cfg.input_norm
        self.subsampling = FRONT_ENDS[cfg.front_end, cfg.subsampling](n_mels, cfg.subsampling_channels, cfg.d_model)
        self.xscale = math.sqrt(cfg.d_model) if cfg.scale_input else 1.0
        self.dropout = Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(ConformerBlock(cfg, widths[i] if widths else None) for i in range(cfg.num_blocks))

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T_in, n_mels), (B,) -> (B, T, D), (B,)."""
        if self.input_norm != "none":
            feats = utterance_norm(feats, lengths, variance=self.input_norm == "utterance")
        x = self.subsampling(feats, lengths)
        lengths = output_lengths(lengths, self.subsampling.factor)
        mask = padding_mask(lengths, x.shape[1])
        # Scale the content up so the unit-amplitude positional code does not swamp it (as in ESPnet).
        x = self.dropout(x * self.xscale + sinusoidal_positions(x.shape[1], x.shape[2], x.device))
        for block in self.blocks:
            x = block(x, mask)
        return x, lengths


class ConformerCTC(nn.Module):
    def __init__(self, cfg: ModelConfig, n_mels: int, vocab_size: int, widths: list[BlockWidths] | None = None):
        super().__init__()
        self.n_mels = n_mels
        self.encoder = ConformerEncoder(cfg, n_mels, widths)
        self.head = nn.Linear(cfg.d_model, vocab_size)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns CTC log-probabilities (B, T, V) and output lengths (B,)."""
        x, lengths = self.encoder(feats, lengths)
        return self.head(x).log_softmax(dim=-1), lengths
