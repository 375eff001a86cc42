"""Parameter counts of a Conformer-CTC implied by its widths alone (per block and per location), and
nonzero counts; used to plan pruning budgets and to check every pruned model's real count."""
from __future__ import annotations

import torch
from torch import nn

from study.config import ModelConfig
from study.model.conformer import BlockWidths, front_end_bins
from study.names import LOCATIONS


def nonzero_params(model: nn.Module) -> int:
    """Nonzero parameters (after masks are made permanent)."""
    return sum(int(torch.count_nonzero(p)) for p in model.parameters())


def block_params(cfg: ModelConfig, w: BlockWidths) -> dict[str, int]:
    """Analytic parameter count of one block by module, from its widths."""
    d, k = cfg.d_model, cfg.conv_kernel
    ln = 2 * d

    def ffn(f: int) -> int:
        return ln + d * f + f + f * d + d if f else d

    q, v = sum(w.query_dims), sum(w.value_dims)
    mhsa = ln + 2 * (d * q + q) + d * v + v + v * d + d if w.value_dims else d
    c = w.conv
    conv = ln + d * 2 * c + 2 * c + c * k + c + 2 * c + c * d + d if c else d
    return {"ffn": ffn(w.ffn1) + ffn(w.ffn2), "mhsa": mhsa, "conv": conv, "norm": ln}


def front_end_params(cfg: ModelConfig, n_mels: int) -> int:
    """The front end (never pruned): its convolutions and the projection to d_model."""
    c = cfg.subsampling_channels
    if cfg.front_end == "conv1d":  # Conv1d(n_mels -> c, 3), two depthwise 3 + pointwise stages, Linear(c -> d)
        return (3 * n_mels * c + c) + 2 * ((3 * c + c) + (c * c + c)) + (c + 1) * cfg.d_model
    if cfg.subsampling == 4:
        convs = (9 * c + c) + (9 * c * c + c)
    else:  # a full 3x3 convolution, then two depthwise 3x3 + pointwise 1x1 stages
        convs = (9 * c + c) + 2 * ((9 * c + c) + (c * c + c))
    return convs + (c * front_end_bins(n_mels, cfg.subsampling) + 1) * cfg.d_model


def analytic_params(cfg: ModelConfig, widths: list[BlockWidths], n_mels: int, vocab_size: int) -> dict[str, int]:
    """Total, encoder and per-location parameter counts implied by the widths alone."""
    front = front_end_params(cfg, n_mels)
    per_block = [block_params(cfg, w) for w in widths]
    by_location = {loc: sum(b[loc] for b in per_block) for loc in LOCATIONS}
    encoder = front + sum(sum(b.values()) for b in per_block)
    return {"total": encoder + cfg.d_model * vocab_size + vocab_size, "encoder": encoder, **by_location}


def kept_units(widths: list[BlockWidths]) -> dict[str, int]:
    return {"ffn": sum(w.ffn1 + w.ffn2 for w in widths),
            "mhsa": sum(sum(w.query_dims) + sum(w.value_dims) for w in widths),
            "conv": sum(w.conv for w in widths)}
