"""What training with adaptive dropout adds to a plain trainer: the logits' optimiser group, the
regulariser with its falling target c(t), temperature annealing, the hard phase, and the
per-epoch figures (kept fraction and mean retention per location, c(t))."""
from __future__ import annotations

from pathlib import Path

import torch

from study.config import AdlConfig
from study.method.adaptive_dropout import (
    AdaptiveDropout,
    annealed_tau,
    linear_ramp,
    polarisation_penalty,
    regulariser,
    target_logit,
)
from study.method.budget import BudgetController
from study.names import LOCATIONS

POLARISED = (0.05, 0.95)  # retention probabilities outside this band count as decided


def polarised_share(p: torch.Tensor) -> float:
    return float(((p < POLARISED[0]) | (p > POLARISED[1])).float().mean())


class AdlController:
    def __init__(self, layers: list[AdaptiveDropout], cfg: AdlConfig, budget: BudgetController | None = None):
        """`budget` (adl.target_reduction) replaces the paper's alpha term by the Lagrangian controller."""
        self.layers, self.cfg, self.budget = layers, cfg, budget
        self.weights = {"ffn": cfg.weight_ffn, "mhsa": cfg.weight_mhsa, "conv": cfg.weight_conv}

    def checkpointed(self) -> dict[str, torch.Tensor]:
        """State outside the model that a resumed run must get back: the controller's multipliers."""
        return {"budget_lambdas": self.budget.lambdas} if self.budget else {}

    def param_groups(self, model: torch.nn.Module, lr: float, weight_decay: float) -> list[dict]:
        """Logits get their own learning rate and no weight decay (decay would pull every p to 0.5)."""
        logits = {id(layer.beta) for layer in self.layers}
        rest = [p for p in model.parameters() if id(p) not in logits]
        groups = [{"params": rest, "lr": lr, "weight_decay": weight_decay},
                  {"params": [layer.beta for layer in self.layers], "lr": self.cfg.lr, "weight_decay": 0.0,
                   "schedule": self.cfg.lr_schedule}]
        return groups + ([self.budget.param_group(self.cfg.lambda_lr)] if self.budget else [])

    def c_t(self, t: float) -> float:
        return target_logit(t, self.cfg.c0, self.cfg.c1, self.cfg.t0, self.cfg.t1)

    def in_hard_phase(self, t: float) -> bool:
        return self.cfg.hard_phase > 0 and t >= 1.0 - self.cfg.hard_phase

    def _noises(self) -> list:
        """The layers' noise sources, each once (attach_adls shares one per model)."""
        return list({id(layer.noise): layer.noise for layer in self.layers}.values())

    def begin_epoch(self, epoch: int) -> None:
        """Called after the epoch's seed is set: the noise pools start afresh from it (see LogisticNoise.reset)."""
        for noise in self._noises():
            noise.reset()

    def state_dict(self) -> dict:
        """State carried within an epoch, for a checkpoint taken mid-epoch: the noise pools."""
        return {"noise": [noise.state_dict() for noise in self._noises()]}

    def load_state_dict(self, state: dict) -> None:
        for noise, pools in zip(self._noises(), state["noise"], strict=True):
            noise.load_state_dict(pools)

    def begin_step(self, t: float) -> None:
        """Sets the temperature and mask mode of the step at training fraction t; called before its
        forward pass (also the first step after a resume, which then sees the annealed temperature)."""
        hard = self.in_hard_phase(t)
        tau = annealed_tau(t, self.cfg.tau, self.cfg.tau_end or None)
        for layer in self.layers:
            layer.tau, layer.frozen = tau, hard
            layer.beta.requires_grad_(not hard)

    def loss(self, t: float) -> torch.Tensor:
        """R(beta; t); zero in the hard phase, where the logits are frozen."""
        if self.in_hard_phase(t) or not self.layers:
            return torch.zeros((), device=self.layers[0].beta.device if self.layers else None)
        if self.budget:
            loss = self.budget.loss(t)
        else:
            loss = regulariser(self.layers, self.cfg.alpha, self.c_t(t), self.cfg.reg_normalization, self.weights)
        weight = self.polarise_weight(t)
        if weight == 0:
            return loss
        penalty = polarisation_penalty(self.layers, weight)
        if self.budget:  # only while the size is where it was asked to be: see polarise_weight
            penalty = penalty * self.budget.within(self.cfg.polarise_gap)
        return loss + penalty

    def polarise_weight(self, t: float) -> float:
        """adl.polarise ramps from 0 when the size should be reached (the budget's warm-up, or t1 when
        c(t) bottoms out) to its full weight at the end of training; pushing earlier would fix units
        on the side where the ramp found them. With a budget it also waits for the cut to be within
        adl.polarise_gap of the target: a push that holds kept units at 1 outweighs the multipliers'
        pull on them (measured: a 70% target stalled at 65.8% when the push began with the cut 4.6
        points short at the end of the warm-up)."""
        start = self.cfg.target_warmup if self.budget else self.cfg.t1
        return self.cfg.polarise * linear_ramp(t, start, 1.0) if start < 1.0 else 0.0

    def by_location(self) -> dict[str, torch.Tensor]:
        """Every unit's retention probability, concatenated per location."""
        return {loc: torch.cat([l.retention.detach().cpu() for l in self.layers if l.location == loc])
                for loc in LOCATIONS if any(l.location == loc for l in self.layers)}

    def epoch_metrics(self, t: float) -> dict[str, float]:
        """Per location: kept fraction, mean retention, and the share of polarised units (p outside
        [0.05, 0.95]: the threshold cut barely changes what they contribute); polarised/all over every unit."""
        metrics = {"adl/c_t": self.c_t(t), "adl/tau": self.layers[0].tau if self.layers else self.cfg.tau}
        if self.cfg.polarise:
            metrics["adl/polarise_weight"] = self.polarise_weight(t)
        probs = self.by_location()
        for loc, p in probs.items():
            metrics[f"adl/kept_fraction/{loc}"] = float((p >= self.cfg.threshold).float().mean())
            metrics[f"adl/mean_retention/{loc}"] = float(p.mean())
            metrics[f"adl/polarised/{loc}"] = polarised_share(p)
        if probs:
            metrics["adl/polarised/all"] = polarised_share(torch.cat(list(probs.values())))
        return metrics | (self.budget.metrics(t) if self.budget else {})

    def set_uncut(self, uncut: str | None) -> None:
        """Evaluation without the threshold cut, to price the cut: "mean" scales every unit as a kept one,
        "p" by sigmoid(beta) (the scale used before E[m], for comparison); None ends it."""
        for layer in self.layers:
            layer.uncut = uncut

    def save_histogram(self, path: Path) -> None:
        """Histogram of the final retention probabilities, one panel per location."""
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        probs = self.by_location()
        fig, axes = plt.subplots(1, max(1, len(probs)), figsize=(4 * max(1, len(probs)), 3.2), squeeze=False)
        for ax, (loc, p) in zip(axes[0], probs.items()):
            ax.hist(p.numpy(), bins=40, range=(0, 1), color="tab:blue")
            ax.axvline(self.cfg.threshold, color="tab:red", linestyle="--", label=f"threshold {self.cfg.threshold}")
            kept = float((p >= self.cfg.threshold).float().mean())
            ax.set_title(f"{loc}: {kept:.0%} of {p.numel()} units kept")
            ax.set_xlabel("evaluation gate clip(1.2 sigmoid(beta) - 0.1, 0, 1)" if self.cfg.gate == "hard_concrete"
                          else "retention probability p = sigmoid(beta)")
            ax.set_ylabel("units")
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
