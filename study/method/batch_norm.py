"""BatchNorm statistics re-estimated for the model as evaluation runs it (adl.recalibrate_bn).

During adaptive-dropout training the conv module's BatchNorm keeps running statistics of activations
behind random masks (its own ADL and those upstream in the block); evaluation and the pruned model
use the deterministic evaluation masks, whose activations have other statistics. Re-estimating them
takes forward passes only: no gradient, no weight changes, so it is not fine-tuning.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


@torch.no_grad()
def recalibrate_batch_norm(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                           autocast: torch.autocast | None = None) -> int:
    """Replaces every BatchNorm's running mean and variance with their average over `batches` of
    (features (B, T, F), lengths (B,)), the rest of the model in evaluation mode; returns the batch count.
    Every module is left in the train/eval mode it was found in."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over every batch, not an exponential one
        m.train()
    count = 0
    try:
        for feats, lengths in batches:
            with autocast or torch.autocast("cpu", enabled=False):
                model(feats, lengths)
            count += 1
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        for m, training in modes:
            m.train(training)
    return count
