"""The baselines (docs/methods.md, Baselines): magnitude pruning (structured, unstructured) and small dense sizing.

Structured ranking. A unit owns the weights that read or write only it (biases and norms aside):
  FFN hidden unit j:   row j of W1 and column j of W2
  query/key dim i:     row i of Wq and row i of Wk (a removed query dim makes its key dim dead)
  value dim i:         row i of Wv and column i of Wo
  conv channel c:      rows c and C+c of the GLU input projection, depthwise kernel c, column c of
                       the output projection
Its score is the L2 norm of those weights. Norms of different unit kinds are not comparable
(different fan-in), so units are ranked within a pool: with `ranking = "global"` a pool is one
kind (ffn, query, value, conv) across all blocks; with `"uniform"` one group of one block. Units
are removed in order of their rank as a fraction of their pool, so every pool loses about the
same fraction, until the pruned model is within one unit of the parameter target.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from study.config import ModelConfig
from study.method.pruning import GROUPS, UnitDecision, pruned_widths
from study.model.conformer import BlockWidths, ConformerCTC, dense_widths
from study.model.size import analytic_params, nonzero_params

UNIT_KIND = {"ffn1": "ffn", "ffn2": "ffn", "query": "query", "value": "value", "conv": "conv"}


class BudgetError(ValueError):
    """A parameter target the method cannot reach."""


def resolve_target(target_params: int, target_reduction: float, dense_total: int) -> int:
    """The parameter budget: explicit, or a fraction of the dense model's count."""
    target = target_params or round(dense_total * (1.0 - target_reduction))
    if not 0 < target <= dense_total:
        raise BudgetError(f"parameter target {target:,} is outside (0, {dense_total:,}] (the dense model)")
    return target


@torch.no_grad()
def unit_sums(model: ConformerCTC, value: Callable[[torch.Tensor], torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """Per block, per group: the sum of `value(weight)` (elementwise) over the weights each unit owns, (n,)."""
    sums = []
    for block in model.encoder.blocks:
        attn, conv = block.mhsa, block.conv
        channels = conv.depthwise.in_channels
        gin = value(conv.pointwise_in.weight)  # (2C, D)
        v = {name: value(layer.weight) for name, layer in (("f1w1", block.ffn1.w1), ("f1w2", block.ffn1.w2),
                                                           ("f2w1", block.ffn2.w1), ("f2w2", block.ffn2.w2),
                                                           ("wq", attn.wq), ("wk", attn.wk), ("wv", attn.wv),
                                                           ("wo", attn.wo), ("out", conv.pointwise_out))}
        sums.append({
            "ffn1": v["f1w1"].sum(1) + v["f1w2"].sum(0),
            "ffn2": v["f2w1"].sum(1) + v["f2w2"].sum(0),
            "query": v["wq"].sum(1) + v["wk"].sum(1),
            "value": v["wv"].sum(1) + v["wo"].sum(0),
            "conv": (gin[:channels].sum(1) + gin[channels:].sum(1) + value(conv.depthwise.weight).flatten(1).sum(1)
                     + v["out"].sum(0)),
        })
    return [{g: s.cpu() for g, s in groups.items()} for groups in sums]


def unit_norms(model: ConformerCTC) -> list[dict[str, torch.Tensor]]:
    """Per block, per group: the L2 norm of the weights each unit owns, (n,)."""
    return [{g: s.sqrt() for g, s in groups.items()} for groups in unit_sums(model, lambda w: w.pow(2))]


def removal_order(norms: list[dict[str, torch.Tensor]], ranking: str) -> list[tuple[int, str, int]]:
    """Every unit as (block, group, index), lowest fractional rank in its pool first."""
    pools: dict[tuple, list[tuple[float, int, str, int]]] = {}
    for b, groups in enumerate(norms):
        for g in GROUPS:
            pool = (UNIT_KIND[g],) if ranking == "global" else (b, g)
            pools.setdefault(pool, []).extend((float(v), b, g, i) for i, v in enumerate(groups[g]))
    ranked = []
    for units in pools.values():
        units.sort()
        ranked.extend(((r + 0.5) / len(units), b, g, i) for r, (_, b, g, i) in enumerate(units))
    ranked.sort(key=lambda u: (u[0], u[1], GROUPS.index(u[2]), u[3]))
    return [(b, g, i) for _, b, g, i in ranked]


def plan_without(norms: list[dict[str, torch.Tensor]], removed: list[tuple[int, str, int]]) -> list[dict[str, UnitDecision]]:
    plan = [{g: UnitDecision(torch.ones(len(v), dtype=torch.bool), torch.ones(len(v))) for g, v in groups.items()}
            for groups in norms]
    for b, g, i in removed:
        plan[b][g].keep[i] = False
    return plan


def structured_plan(model: ConformerCTC, cfg: ModelConfig, target: int, ranking: str = "global",
                    scores: list[dict[str, torch.Tensor]] | None = None) -> list[dict[str, UnitDecision]]:
    """The fewest lowest-ranked removals that bring the pruned model to at most `target` parameters; units
    ranked by `scores` (per block and group, (n,) each), by their weights' norm when None."""
    norms = scores if scores is not None else unit_norms(model)
    order = removal_order(norms, ranking)

    def params_after(k: int) -> int:
        widths = pruned_widths(plan_without(norms, order[:k]), cfg)
        return analytic_params(cfg, widths, model.n_mels, model.head.out_features)["total"]

    if params_after(len(order)) > target:
        raise BudgetError(f"removing every prunable unit leaves {params_after(len(order)):,} parameters, "
                          f"more than the target {target:,}")
    lo, hi = 0, len(order)  # params_after is non-increasing in k: binary search the smallest k that fits
    while lo < hi:
        mid = (lo + hi) // 2
        if params_after(mid) <= target:
            hi = mid
        else:
            lo = mid + 1
    return plan_without(norms, order[:lo])


# --- unstructured -------------------------------------------------------------------------

def weight_matrices(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """Every weight matrix or kernel (Linear, Conv1d, Conv2d); biases and norms are not pruned."""
    return [(m, "weight") for m in model.modules()
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)) and m.weight.dim() >= 2]


def apply_global_magnitude(model: nn.Module, target_nonzero: int) -> None:
    """Masks the globally smallest weights so that `target_nonzero` parameters remain (masks stay
    attached as forward pre-hooks, so fine-tuning keeps pruned weights at zero)."""
    prunable = sum(int(torch.count_nonzero(m.weight)) for m, _ in weight_matrices(model))
    amount = nonzero_params(model) - target_nonzero  # zero biases (fresh or trained) already count as gone
    if not 0 <= amount <= prunable:
        raise BudgetError(f"a nonzero target of {target_nonzero:,} needs {amount:,} weights removed, "
                          f"but only {prunable:,} weights are prunable")
    torch_prune.global_unstructured(weight_matrices(model), pruning_method=torch_prune.L1Unstructured, amount=amount)


def make_permanent(model: nn.Module) -> None:
    for module, name in weight_matrices(model):
        if torch_prune.is_pruned(module):
            torch_prune.remove(module, name)


# --- small dense ------------------------------------------------------------------------------

def _total(cfg: ModelConfig, widths: list[BlockWidths], n_mels: int, vocab: int) -> int:
    return analytic_params(cfg, widths, n_mels, vocab)["total"]


def _fit_ffn(cfg: ModelConfig, make: Callable[[int], list[BlockWidths]], target: int, n_mels: int, vocab: int) -> tuple[int, int]:
    """The FFN width (>= 1) whose model is closest to `target`, and that model's size."""
    base = _total(cfg, make(1), n_mels, vocab)
    per_unit = _total(cfg, make(2), n_mels, vocab) - base
    ffn = max(1, round(1 + (target - base) / per_unit))
    return ffn, _total(cfg, make(ffn), n_mels, vocab)


def _closest(candidates: list[tuple[bool, float, object]], target: int):
    """Among shapes within 3% of the target, the one whose proportions are nearest the original."""
    missed, _, shape = min(candidates, key=lambda c: (c[0], c[1]))
    if missed:
        raise BudgetError(f"no dense shape comes within 3% of {target:,} parameters")
    return shape


def small_dense_shape(cfg: ModelConfig, target: int, shrink: str, n_mels: int,
                      vocab: int) -> tuple[ModelConfig, list[BlockWidths]]:
    """Widths of a dense model of about `target` parameters, in the proportions of `cfg`.

    shrink = "d_model": every width scales with d_model (a multiple of num_heads; FFN and conv keep
    their ratio to it), then the FFN width is trimmed to the target. shrink = "inner": d_model
    stays; FFN, conv and per-head attention widths shrink by one factor, then the FFN is trimmed.
    """
    blocks, heads = cfg.num_blocks, cfg.num_heads
    candidates = []
    if shrink == "d_model":
        ffn_ratio, conv_ratio = cfg.ffn_dim / cfg.d_model, cfg.conv_channels / cfg.d_model
        for d in range(heads, cfg.d_model + 1, heads):
            shape = dataclasses.replace(cfg, d_model=d, conv_channels=max(1, round(conv_ratio * d)))
            ffn, total = _fit_ffn(shape, lambda f: dense_widths(dataclasses.replace(shape, ffn_dim=f)),
                                  target, n_mels, vocab)
            candidates.append((abs(total - target) > 0.03 * target, abs(ffn / d - ffn_ratio),
                               dataclasses.replace(shape, ffn_dim=ffn)))
        best = _closest(candidates, target)
        return best, dense_widths(best)
    head = cfg.d_model // heads
    for step in range(1, 101):
        scale = step / 100
        q = max(1, round(scale * head))
        conv = max(1, round(scale * cfg.conv_channels))
        ffn, total = _fit_ffn(cfg, lambda f: [BlockWidths(f, f, [q] * heads, [q] * heads, conv)] * blocks,
                              target, n_mels, vocab)
        candidates.append((abs(total - target) > 0.03 * target, abs(ffn / cfg.ffn_dim - scale), (ffn, q, conv)))
    ffn, q, conv = _closest(candidates, target)
    return cfg, [BlockWidths(ffn, ffn, [q] * heads, [q] * heads, conv)] * blocks
