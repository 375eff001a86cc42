"""A budget you can ask for (adl.target_reduction): a Lagrangian controller beside the paper's method.

The paper's regulariser reaches a size only indirectly (through alpha, c1 and the schedule). Here the
expected parameter reduction s, computed from the retention probabilities and the exact parameters the
pruner removes with each unit, is driven to a target t that ramps up over a warm-up fraction:
    L_budget = lambda1 (s - t) + lambda2 (s - t)^2,
with the lambdas trained by gradient ascent (an AdamW group with maximize=True), as in FLOP (Wang et al.
2020), CoFi (Xia et al. 2022) and DPHuBERT (Peng et al. 2023). It replaces the alpha term when set.
"""
from __future__ import annotations

import torch
from torch import nn

from study.config import ModelConfig
from study.method.adaptive_dropout import AdaptiveDropout, linear_ramp
from study.method.attach import gate_seam, group_width
from study.method.pruning import GROUPS
from study.model.conformer import ConformerCTC, dense_widths
from study.model.size import analytic_params, front_end_params


def _keep_probabilities(block: nn.Module, group: str, cut: bool) -> torch.Tensor:
    """(n,) probability that each unit of a group survives: its ADL's keep probability (p, or a hard
    concrete's P(z > 0)), or 1 where no ADL sits. cut: the threshold's 0/1 decisions in value, the keep
    probability's gradient (straight-through)."""
    gate = getattr(*gate_seam(block, group))
    if isinstance(gate, AdaptiveDropout):
        p = gate.keep_probability
        return p + (gate.keep_mask().to(p.dtype) - p).detach() if cut else p
    return torch.ones(group_width(block, group), device=block.norm.weight.device)


def _any_kept(p: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Probability that at least one unit survives (units kept independently)."""
    return 1.0 - torch.prod(1.0 - p, dim=dim)


def expected_params(model: ConformerCTC, cfg: ModelConfig, cut: bool = False) -> torch.Tensor:
    """Expected parameter count of the pruned model (a differentiable scalar), each unit kept with its
    probability. Mirrors model/size.py: a unit takes its rows and columns; a module that loses every
    unit keeps only its output bias (its LayerNorm goes); a head that loses every value unit takes its
    query and key dimensions with it. Equals the pruned model's real count when every p is 0 or 1, and
    always with `cut` (the value the threshold cut gives; the gradient still flows through p)."""
    d, k, heads = cfg.d_model, cfg.conv_kernel, cfg.num_heads
    ln = 2 * d
    total = torch.tensor(float(front_end_params(cfg, model.n_mels) + model.head.weight.numel()
                               + model.head.bias.numel()), device=model.head.weight.device)
    for block in model.encoder.blocks:
        p = {g: _keep_probabilities(block, g, cut) for g in GROUPS}
        for g in ("ffn1", "ffn2"):  # a hidden unit: a row of W1 with its bias, a column of W2
            total = total + d + _any_kept(p[g]) * ln + p[g].sum() * (2 * d + 1)
        head_kept = _any_kept(p["value"].view(heads, -1))  # (H,)
        queries = (head_kept * p["query"].view(heads, -1).sum(1)).sum()  # a query unit: rows of Wq and Wk
        total = total + d + _any_kept(p["value"]) * ln + queries * 2 * (d + 1) + p["value"].sum() * (2 * d + 1)
        # a conv channel: two rows of the GLU input (value, gate), its depthwise kernel and bias, BatchNorm's
        # weight and bias, a column of the output projection
        total = total + d + _any_kept(p["conv"]) * ln + p["conv"].sum() * (3 * d + k + 5)
        total = total + ln  # the block's final LayerNorm
    return total


class BudgetController:
    """measure: what the multipliers see. "expected" is the expected reduction; "cut" is the reduction the
    threshold cut gives (exactly what pruning will remove), with the expectation's gradient for the logits.
    Driven by the expectation, the cut lands past the target (units hovering just under the threshold
    count as partly kept); driven by the cut, the multipliers keep pushing until the cut itself is there."""

    def __init__(self, model: ConformerCTC, cfg: ModelConfig, target: float, warmup: float, measure: str = "cut",
                 anti_windup: bool = True):
        self.model, self.cfg, self.target, self.warmup, self.measure = model, cfg, target, warmup, measure
        self.anti_windup = anti_windup
        self.hard_concrete = any(getattr(l, "hard_concrete", False) for l in model.modules())
        self.dense_total = analytic_params(cfg, dense_widths(cfg), model.n_mels, model.head.out_features)["total"]
        self.lambdas = nn.Parameter(torch.zeros(2, device=model.head.weight.device))  # lambda1, lambda2
        self.gap = torch.full((), float("inf"), device=model.head.weight.device)  # the last step's s - t

    def reduction(self, cut: bool = False) -> torch.Tensor:
        """The expected reduction, or with `cut` the threshold cut's (straight-through)."""
        return 1.0 - expected_params(self.model, self.cfg, cut) / self.dense_total

    def target_at(self, t: float) -> float:
        """The target ramps linearly from 0 to the requested reduction over the first `warmup` of training."""
        return self.target * linear_ramp(t, 0.0, self.warmup)

    def loss(self, t: float) -> torch.Tensor:
        gap = self.reduction(cut=self.measure == "cut") - self.target_at(t)
        self.gap = gap.detach()
        if self.anti_windup:
            self._release_windup(self.gap)
        return self.lambdas[0] * gap + self.lambdas[1] * gap.pow(2)

    @torch.no_grad()
    def _release_windup(self, gap: torch.Tensor) -> None:
        """Anti-windup (conditional integration): lambda1 grows while the reduction lags the ramp, and after
        the reduction crosses the target it keeps pushing the same way until ascent has unwound it, so the
        cut lands past the target (measured: 71.6% for 70%, logits of pruned units too deep to come back).
        A lambda1 that pushes away from the target (lambda1 * gap < 0) is reset to 0; on the device, no sync."""
        lambda1 = self.lambdas[0]
        lambda1.copy_(torch.where(lambda1 * gap < 0, torch.zeros_like(lambda1), lambda1))

    def within(self, tolerance: float) -> torch.Tensor:
        """1.0 while the last step's reduction was within `tolerance` of the target, else 0.0 (on the
        device: no sync)."""
        return (self.gap.abs() <= tolerance).to(self.lambdas.dtype)

    def param_group(self, lr: float) -> dict:
        """The lambdas climb the Lagrangian (gradient ascent) while everything else descends it."""
        return {"params": [self.lambdas], "lr": lr, "weight_decay": 0.0, "maximize": True, "schedule": "constant"}

    def metrics(self, t: float) -> dict[str, float]:
        with torch.no_grad():
            # expected under the training masks' keep probabilities: p (Gumbel-sigmoid), P(z > 0) (hard concrete)
            expected = "adl/expected_l0_reduction" if self.hard_concrete else "adl/expected_reduction"
            return {expected: float(self.reduction()),
                    "adl/cut_reduction": float(self.reduction(cut=True)), "adl/target_reduction": self.target_at(t),
                    "adl/lambda1": float(self.lambdas[0]), "adl/lambda2": float(self.lambdas[1])}
