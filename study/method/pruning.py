"""Physical pruning: build an ordinary, smaller ConformerCTC from a model and per-unit decisions.

A decision for each prunable group of one block is (keep: bool (n,), scale: float (n,)); `scale`
is the factor a kept unit's output carries (the ADL's p with inference = "expected", else 1) and
is folded into the next weights, so the pruned model has no per-unit multiply at run time.
Which rows and columns each unit owns follows the unit layout of docs/methods.md (invariant 1). Used by every method; where the
decisions come from (adaptive dropout: study/method/attach.py, magnitude: baselines.py) is not its concern.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from study.config import ModelConfig
from study.model.conformer import (
    BlockWidths,
    ConformerCTC,
    ConvModule,
    FeedForward,
    SelfAttention,
)

GROUPS = ("ffn1", "ffn2", "query", "value", "conv")  # prunable unit groups of one block
GROUP_LOCATION = {"ffn1": "ffn", "ffn2": "ffn", "query": "mhsa", "value": "mhsa", "conv": "conv"}


@dataclass
class UnitDecision:
    keep: torch.Tensor  # (n,) bool
    scale: torch.Tensor  # (n,) float, folded into the next weights for kept units


def _head_split(decision_q: UnitDecision, decision_v: UnitDecision, num_heads: int):
    """Kept heads (those with a value unit left) and each head's kept query and value units."""
    q_keep, v_keep = decision_q.keep.view(num_heads, -1), decision_v.keep.view(num_heads, -1)
    heads = [h for h in range(num_heads) if v_keep[h].any()]
    head_dim = q_keep.shape[1]
    none = torch.zeros(0, dtype=torch.long, device=q_keep.device)
    q_units = torch.cat([h * head_dim + q_keep[h].nonzero().flatten() for h in heads]) if heads else none
    v_units = torch.cat([h * head_dim + v_keep[h].nonzero().flatten() for h in heads]) if heads else none
    return heads, [int(q_keep[h].sum()) for h in heads], [int(v_keep[h].sum()) for h in heads], q_units, v_units


def pruned_widths(plan: list[dict[str, UnitDecision]], cfg: ModelConfig) -> list[BlockWidths]:
    widths = []
    for d in plan:
        _, q_dims, v_dims, _, _ = _head_split(d["query"], d["value"], cfg.num_heads)
        widths.append(BlockWidths(int(d["ffn1"].keep.sum()), int(d["ffn2"].keep.sum()), q_dims, v_dims,
                                  int(d["conv"].keep.sum())))
    return widths


@torch.no_grad()
def _prune_ffn(src: FeedForward, dst: nn.Module, d: UnitDecision) -> None:
    keep = d.keep.nonzero().flatten()
    if isinstance(dst, FeedForward):
        dst.norm.load_state_dict(src.norm.state_dict())
        dst.w1.weight.copy_(src.w1.weight[keep])
        dst.w1.bias.copy_(src.w1.bias[keep])
        dst.w2.weight.copy_(src.w2.weight[:, keep] * d.scale[keep])
        dst.w2.bias.copy_(src.w2.bias)
    else:  # no hidden unit left: W2 sees zeros, only its bias remains
        dst.bias.copy_(src.w2.bias)


@torch.no_grad()
def _prune_attention(src: SelfAttention, dst: nn.Module, dq: UnitDecision, dv: UnitDecision, num_heads: int) -> None:
    _, _, _, q_units, v_units = _head_split(dq, dv, num_heads)
    if not isinstance(dst, SelfAttention):  # every head lost its values: the output bias remains
        dst.bias.copy_(src.wo.bias)
        return
    dst.norm.load_state_dict(src.norm.state_dict())
    q_scale = dq.scale[q_units]
    dst.wq.weight.copy_(src.wq.weight[q_units] * q_scale[:, None])
    dst.wq.bias.copy_(src.wq.bias[q_units] * q_scale)
    dst.wk.weight.copy_(src.wk.weight[q_units])  # a zero query dimension makes its key dimension dead
    dst.wk.bias.copy_(src.wk.bias[q_units])
    dst.wv.weight.copy_(src.wv.weight[v_units])
    dst.wv.bias.copy_(src.wv.bias[v_units])
    dst.wo.weight.copy_(src.wo.weight[:, v_units] * dv.scale[v_units])  # attention is linear in v
    dst.wo.bias.copy_(src.wo.bias)


@torch.no_grad()
def _pruned_channel_constant(src: ConvModule, dropped: torch.Tensor) -> torch.Tensor:
    """A dropped channel sees zeros, so emits Swish(BatchNorm(depthwise bias)) at every frame: (D,)."""
    if dropped.numel() == 0:
        return torch.zeros_like(src.pointwise_out.bias)
    bn = src.batch_norm
    bias = src.depthwise.bias[dropped] if src.depthwise.bias is not None else bn.running_mean.new_zeros(len(dropped))
    normed = (bias - bn.running_mean[dropped]) / torch.sqrt(bn.running_var[dropped] + bn.eps)
    const = F.silu(normed * bn.weight[dropped] + bn.bias[dropped])  # (n_dropped,)
    return src.pointwise_out.weight[:, dropped] @ const


@torch.no_grad()
def _prune_conv(src: ConvModule, dst: nn.Module, d: UnitDecision) -> None:
    keep, dropped = d.keep.nonzero().flatten(), (~d.keep).nonzero().flatten()
    out_bias = src.pointwise_out.bias + _pruned_channel_constant(src, dropped)
    if not isinstance(dst, ConvModule):
        dst.bias.copy_(out_bias)
        return
    channels = src.depthwise.in_channels
    s = d.scale[keep]
    dst.norm.load_state_dict(src.norm.state_dict())
    # GLU(a, b) = a * sigmoid(b): the scale goes on the value half a, the gate half b is untouched.
    dst.pointwise_in.weight.copy_(torch.cat([src.pointwise_in.weight[keep] * s[:, None],
                                             src.pointwise_in.weight[channels + keep]]))
    dst.pointwise_in.bias.copy_(torch.cat([src.pointwise_in.bias[keep] * s, src.pointwise_in.bias[channels + keep]]))
    dst.depthwise.weight.copy_(src.depthwise.weight[keep])
    dst.depthwise.bias.copy_(src.depthwise.bias[keep])
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(dst.batch_norm, name).copy_(getattr(src.batch_norm, name)[keep])
    dst.batch_norm.num_batches_tracked.copy_(src.batch_norm.num_batches_tracked)
    dst.pointwise_out.weight.copy_(src.pointwise_out.weight[:, keep])
    dst.pointwise_out.bias.copy_(out_bias)


@torch.no_grad()
def prune(model: ConformerCTC, cfg: ModelConfig, plan: list[dict[str, UnitDecision]]) -> tuple[ConformerCTC, list[BlockWidths]]:
    """A new ConformerCTC holding only the kept units; equal to `model` (gates applied) in eval mode."""
    weight = model.head.weight  # decisions may come from anywhere (magnitude norms live on the CPU)
    plan = [{g: UnitDecision(d.keep.to(weight.device), d.scale.to(weight.device, weight.dtype)) for g, d in block.items()}
            for block in plan]
    widths = pruned_widths(plan, cfg)
    src_state = {k: v for k, v in model.state_dict().items() if not k.endswith(".beta")}
    pruned = ConformerCTC(cfg, model.n_mels, model.head.out_features, widths).to(weight.device)
    shared = {k: v for k, v in src_state.items() if not k.startswith("encoder.blocks.")}
    pruned.load_state_dict(shared, strict=False)
    for src, dst, d in zip(model.encoder.blocks, pruned.encoder.blocks, plan):
        _prune_ffn(src.ffn1, dst.ffn1, d["ffn1"])
        _prune_ffn(src.ffn2, dst.ffn2, d["ffn2"])
        _prune_attention(src.mhsa, dst.mhsa, d["query"], d["value"], cfg.num_heads)
        _prune_conv(src.conv, dst.conv, d["conv"])
        dst.norm.load_state_dict(src.norm.state_dict())
    return pruned.eval(), widths
