"""Where adaptive dropout layers attach (the `gate` seams of every block) and what they decide at the
end of training: per block, each group's kept units and the scale folded into the next weights."""
from __future__ import annotations

import torch
from torch import nn

from study.method.adaptive_dropout import AdaptiveDropout, AdlSettings
from study.method.noise import LogisticNoise
from study.method.pruning import GROUP_LOCATION, GROUPS, UnitDecision
from study.model.conformer import ConformerBlock, ConformerCTC


def gate_seam(block: ConformerBlock, group: str) -> tuple[nn.Module, str]:
    """The module holding a group's gate and the attribute name of that gate."""
    return {"ffn1": (block.ffn1, "gate"), "ffn2": (block.ffn2, "gate"), "query": (block.mhsa, "query_gate"),
            "value": (block.mhsa, "value_gate"), "conv": (block.conv, "gate")}[group]


def group_width(block: ConformerBlock, group: str) -> int:
    return {"ffn1": block.ffn1.w1.out_features, "ffn2": block.ffn2.w1.out_features,
            "query": block.mhsa.wq.out_features, "value": block.mhsa.wv.out_features,
            "conv": block.conv.depthwise.in_channels}[group]


def attach_adls(model: ConformerCTC, locations: list[str], settings: AdlSettings) -> list[AdaptiveDropout]:
    """Puts an ADL at every gate seam of the enabled locations; returns them in block order."""
    layers, noise = [], LogisticNoise(settings.noise)
    for block in model.encoder.blocks:
        for group in GROUPS:
            if GROUP_LOCATION[group] in locations:
                layer = AdaptiveDropout(group_width(block, group), GROUP_LOCATION[group], settings, noise)
                setattr(*gate_seam(block, group), layer.to(block.norm.weight.device))
                layers.append(layer)
    return layers


def adl_layers(model: nn.Module) -> list[AdaptiveDropout]:
    return [m for m in model.modules() if isinstance(m, AdaptiveDropout)]


def adl_decisions(model: ConformerCTC) -> list[dict[str, UnitDecision]]:
    """Per block: each group's decision from its ADL (keep all, scale 1 where no ADL sits)."""
    plan = []
    for block in model.encoder.blocks:
        decisions = {}
        for group in GROUPS:
            gate = getattr(*gate_seam(block, group))
            if isinstance(gate, AdaptiveDropout):
                decisions[group] = UnitDecision(gate.keep_mask(), gate.eval_scale())
            else:
                n = group_width(block, group)
                ones = torch.ones(n, device=block.norm.weight.device)
                decisions[group] = UnitDecision(ones.bool(), ones)
        plan.append(decisions)
    return plan
