"""The adaptive dropout layer (ADL) and its regulariser (docs/methods.md, Adaptive dropout).

Each unit d has a trainable logit beta[d]; its retention probability is p = sigmoid(beta).
Training draws a relaxed Bernoulli (Gumbel-sigmoid) mask m with temperature tau; evaluation keeps
units with p >= threshold, scaled ("expected") or not ("hard"). The scale is the mean training saw,
E[m] = E[sigmoid((beta + L) / tau)] over logistic noise L, which equals p only as tau -> 0 (at tau = 1,
beta = 3: 0.887 against p = 0.953); straight-through masks (m > 1/2 forward) have mean p exactly.
The regulariser alpha * mean (beta - c(t))^2 pulls logits toward a target that falls during training.

gate = "hard_concrete" (Louizos et al. 2018; docs/methods.md, Hard concrete gates) stretches the relaxed mask to (-0.1, 1.1)
and clips it to [0, 1], so masks are exactly 0 or 1 with real probability; its evaluation gate
clip(sigmoid(beta) * 1.2 - 0.1, 0, 1) takes the place of p (exactly 0 or 1 once |beta| > 2.4), and is
also its evaluation scale (Louizos et al.'s test-time gate).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import nn

from study.config import AdlConfig
from study.method.noise import LogisticNoise

STRETCH = (-0.1, 1.1)  # the hard concrete's stretch limits (gamma, zeta)
MEAN_TABLE_STEP = 1 / 32  # logit spacing of the tabulated relaxed-mask mean (linear interpolation between)
MEAN_QUADRATURE = 4096  # midpoints in u of the integral over the noise: error under 1 / 4096 at any tau


@dataclass
class AdlSettings:
    """What one layer needs at run time (a view of the `[adl]` configuration)."""
    tau: float = 1.0
    threshold: float = 0.5
    inference: str = "expected"  # expected | hard
    mask_granularity: str = "frame"  # frame | utterance
    straight_through: bool = False
    rescale: str = "none"  # none | inverted
    beta0: float = 3.0
    noise: str = "pooled"  # pooled | fresh (study/method/noise.py)
    gate: str = "gumbel_sigmoid"  # gumbel_sigmoid | hard_concrete

    @classmethod
    def from_config(cls, cfg: AdlConfig) -> "AdlSettings":
        return cls(tau=cfg.tau, threshold=cfg.threshold, inference=cfg.inference,
                   mask_granularity=cfg.mask_granularity, straight_through=cfg.straight_through,
                   rescale=cfg.rescale, beta0=cfg.beta0, noise=cfg.noise, gate=cfg.gate)


class AdaptiveDropout(nn.Module):
    """Masks the last dimension of its input: (..., n) -> (..., n)."""

    def __init__(self, units: int, location: str, settings: AdlSettings, noise: LogisticNoise | None = None):
        super().__init__()
        self.location, self.settings = location, settings
        self.noise = noise or LogisticNoise(settings.noise)  # shared by a model's layers
        self.beta = nn.Parameter(torch.full((units,), float(settings.beta0)))
        self.tau = settings.tau  # may be annealed during training
        self.frozen = False  # hard phase: train with the evaluation (thresholded) masks
        # evaluation without the threshold cut (a diagnostic): None (off), "mean" (every unit scaled as a
        # kept one), "p" (every unit times sigmoid(beta): what evaluation used before E[m], for comparison)
        self.uncut: str | None = None

    @property
    def hard_concrete(self) -> bool:
        return self.settings.gate == "hard_concrete"

    @property
    def retention(self) -> torch.Tensor:  # (n,) what evaluation multiplies a unit by before the cut
        p = torch.sigmoid(self.beta)
        return _stretch(p) if self.hard_concrete else p

    @property
    def keep_probability(self) -> torch.Tensor:  # (n,) probability that a training mask keeps the unit
        if self.hard_concrete:  # P(z > 0) = sigmoid(beta - tau log(-gamma / zeta)): the expected L0 norm
            return torch.sigmoid(self.beta - self.tau * math.log(-STRETCH[0] / STRETCH[1]))
        return torch.sigmoid(self.beta)  # P(m > 1/2)

    @property
    def relaxed_forward(self) -> bool:  # forward multiplies by a relaxed Gumbel-sigmoid mask, whose mean is not p
        return not (self.hard_concrete or self.settings.straight_through)

    @property
    def mask_mean(self) -> torch.Tensor:  # (n,) the mean of a training mask, detached: E[m]
        if self.hard_concrete:  # Louizos et al.'s test-time gate, not the stretched mask's mean
            return self.retention.detach()
        if not self.relaxed_forward:  # straight-through: forward uses m > 1/2, kept with probability p exactly
            return torch.sigmoid(self.beta.detach())
        return relaxed_mask_mean(self.beta.detach(), self.tau)

    def keep_mask(self) -> torch.Tensor:  # (n,) bool: the units that survive pruning
        return self.retention.detach() >= self.settings.threshold

    def eval_scale(self) -> torch.Tensor:  # (n,) what a kept unit is multiplied by in evaluation
        scale = self.mask_mean if self.settings.inference == "expected" else torch.ones_like(self.beta.detach())
        return torch.where(self.keep_mask(), scale, torch.zeros_like(scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.uncut and not self.training:  # what evaluation gives before any unit is cut
            if self.settings.inference == "hard":
                return x
            scale = torch.sigmoid(self.beta.detach()) if self.uncut == "p" else self.mask_mean
            return x * scale.to(x.dtype)
        if not self.training or self.frozen:
            return x * self.eval_scale().to(x.dtype)
        s = self.settings
        # utterance: one draw per unit and utterance, broadcast over time; frame: one per element.
        shape = x.shape if s.mask_granularity == "frame" else (x.shape[0],) + (1,) * (x.dim() - 2) + x.shape[-1:]
        noise = self.noise.draw(shape, x.device)  # logistic: log(u) - log(1 - u)
        if self.hard_concrete:
            mask = HardConcreteMask.apply(self.beta, noise, self.tau)
        else:
            mask = relaxed_bernoulli(self.beta, noise, self.tau)
        if s.straight_through:
            mask = mask + ((mask > 0.5).to(mask.dtype) - mask).detach()
        if s.rescale == "inverted":  # the mask's mean becomes 1 (hard concrete is refused with this)
            mask = mask / self.mask_mean.clamp_min(0.05)
        return x * mask.to(x.dtype)


def relaxed_mask_mean(beta: torch.Tensor, tau: float) -> torch.Tensor:
    """E[sigmoid((beta + L) / tau)], L ~ Logistic(0, 1): the mean of a Gumbel-sigmoid mask, (n,) -> (n,),
    interpolated in a table for this tau (on beta's device; float32)."""
    low, table = _mask_mean_table(float(tau), str(beta.device))
    position = ((beta.float() - low) / MEAN_TABLE_STEP).clamp(0.0, table.numel() - 1.001)
    index = position.floor().long()
    frac = position - index
    return table[index] * (1.0 - frac) + table[index + 1] * frac


@functools.lru_cache(maxsize=16)
def _mask_mean_table(tau: float, device: str) -> tuple[float, torch.Tensor]:
    """(lowest logit, (G,) means) over logits within +-(20 + 10 tau), beyond which the mean is 0 or 1 to
    within 1e-4: the integral over u in (0, 1) of sigmoid((beta + logit(u)) / tau) by the midpoint rule,
    in float64 (a few tens of milliseconds, once per temperature)."""
    half_width = 20.0 + 10.0 * tau
    betas = torch.arange(-half_width, half_width + MEAN_TABLE_STEP / 2, MEAN_TABLE_STEP, dtype=torch.float64)
    noise = torch.logit((torch.arange(MEAN_QUADRATURE, dtype=torch.float64) + 0.5) / MEAN_QUADRATURE)  # (K,)
    means = torch.cat([torch.sigmoid((chunk[:, None] + noise) / tau).mean(1) for chunk in betas.split(256)])
    return -half_width, means.float().to(device)


def relaxed_bernoulli(beta: torch.Tensor, noise: torch.Tensor, tau: float) -> torch.Tensor:
    """sigmoid((noise + beta) / tau), (n,) and (..., n) -> (..., n): one pass for the sum and one in place
    for the sigmoid. The Gumbel-sigmoid mask, and the hard concrete's before its stretch."""
    return torch.add(beta / tau, noise, alpha=1.0 / tau).sigmoid_()


class HardConcreteMask(torch.autograd.Function):
    """clip(sigmoid((beta + noise) / tau) * (zeta - gamma) + gamma, 0, 1), differentiated in beta by two fused
    kernels (clip's and sigmoid's backward) and a sum: traced by autograd, the stretch and clip cost three
    times the Gumbel-sigmoid mask's time in forward and backward (2 CPU threads, an FFN's (16, 38, 384))."""

    @staticmethod
    def forward(ctx, beta: torch.Tensor, noise: torch.Tensor, tau: float) -> torch.Tensor:  # (n,), (..., n)
        s = relaxed_bernoulli(beta, noise, tau)
        mask = _stretch(s)
        ctx.save_for_backward(s, mask)
        ctx.tau = tau
        return mask  # (..., n)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        s, mask = ctx.saved_tensors
        low, high = STRETCH
        grad = torch.ops.aten.hardtanh_backward(grad, mask, 0.0, 1.0)  # zero where the clip holds the mask
        grad = torch.ops.aten.sigmoid_backward(grad, s)
        return grad.sum(dim=tuple(range(grad.dim() - 1))) * ((high - low) / ctx.tau), None, None


def _stretch(s: torch.Tensor) -> torch.Tensor:
    """The hard concrete's stretch to (gamma, zeta) and clip to [0, 1]."""
    low, high = STRETCH
    return s.mul(high - low).add_(low).clamp_(0.0, 1.0)  # one new tensor (s may be saved for backward)


def linear_ramp(t: float, t0: float, t1: float) -> float:
    """clip((t - t0) / (t1 - t0), 0, 1): 0 before t0, 1 from t1 on (a step at t0 when t1 <= t0)."""
    return min(1.0, max(0.0, (t - t0) / (t1 - t0))) if t1 > t0 else float(t >= t0)


def target_logit(t: float, c0: float, c1: float, t0: float, t1: float) -> float:
    """c(t) = c0 + (c1 - c0) * clip((t - t0) / (t1 - t0), 0, 1), t = fraction of training done."""
    return c0 + (c1 - c0) * linear_ramp(t, t0, t1)


def annealed_tau(t: float, tau: float, tau_end: float | None) -> float:
    """Geometric annealing from tau to tau_end over training (constant when tau_end is None)."""
    if tau_end is None:
        return tau
    return tau * math.exp(t * math.log(tau_end / tau))


def polarisation_penalty(layers: list[AdaptiveDropout], weight: float) -> torch.Tensor:
    """weight * sum over units of g (1 - g), g each unit's evaluation gate (the value the threshold cuts):
    it pushes a gate above 1/2 up and one below down, so no unit is left straddling the cut. A sum, so
    the push on one unit does not depend on model size; zero for a decided unit (g = 0 or 1)."""
    g = torch.cat([layer.retention for layer in layers])  # (units,)
    return weight * (g * (1.0 - g)).sum()


def regulariser(layers: list[AdaptiveDropout], alpha: float, c_t: float, normalization: str = "unit",
                location_weights: dict[str, float] | None = None) -> torch.Tensor:
    """alpha * (beta - c(t))^2 summed over every unit ("sum", the paper's form), its mean over every
    unit ("unit"), or its mean within each layer, then over layers ("layer")."""
    weights = location_weights or {}
    if not layers:
        return torch.zeros(())
    if normalization in ("unit", "sum"):
        terms = torch.cat([weights.get(l.location, 1.0) * (l.beta - c_t).pow(2) for l in layers])
        return alpha * (terms.sum() if normalization == "sum" else terms.mean())
    per_layer = torch.stack([weights.get(l.location, 1.0) * (l.beta - c_t).pow(2).mean() for l in layers])
    return alpha * per_layer.mean()
