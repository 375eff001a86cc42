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
    regulariser,
    target_logit,
)
from study.names import LOCATIONS


class AdlController:
    def __init__(self, layers: list[AdaptiveDropout], cfg: AdlConfig):
        self.layers, self.cfg = layers, cfg
        self.weights = {"ffn": cfg.weight_ffn, "mhsa": cfg.weight_mhsa, "conv": cfg.weight_conv}

    def param_groups(self, model: torch.nn.Module, lr: float, weight_decay: float) -> list[dict]:
        """Logits get their own learning rate and no weight decay (decay would pull every p to 0.5)."""
        logits = {id(layer.beta) for layer in self.layers}
        rest = [p for p in model.parameters() if id(p) not in logits]
        return [{"params": rest, "lr": lr, "weight_decay": weight_decay},
                {"params": [layer.beta for layer in self.layers], "lr": self.cfg.lr, "weight_decay": 0.0}]

    def c_t(self, t: float) -> float:
        return target_logit(t, self.cfg.c0, self.cfg.c1, self.cfg.t0, self.cfg.t1)

    def in_hard_phase(self, t: float) -> bool:
        return self.cfg.hard_phase > 0 and t >= 1.0 - self.cfg.hard_phase

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
        return regulariser(self.layers, self.cfg.alpha, self.c_t(t), self.cfg.reg_normalization, self.weights)

    def by_location(self) -> dict[str, torch.Tensor]:
        """Every unit's retention probability, concatenated per location."""
        return {loc: torch.cat([l.retention.detach().cpu() for l in self.layers if l.location == loc])
                for loc in LOCATIONS if any(l.location == loc for l in self.layers)}

    def epoch_metrics(self, t: float) -> dict[str, float]:
        metrics = {"adl/c_t": self.c_t(t), "adl/tau": self.layers[0].tau if self.layers else self.cfg.tau}
        for loc, p in self.by_location().items():
            metrics[f"adl/kept_fraction/{loc}"] = float((p >= self.cfg.threshold).float().mean())
            metrics[f"adl/mean_retention/{loc}"] = float(p.mean())
        return metrics

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
            ax.set_xlabel("retention probability p = sigmoid(beta)")
            ax.set_ylabel("units")
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
