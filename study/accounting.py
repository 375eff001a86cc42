"""Parameter, FLOP and latency accounting, shared by every method.

Counts never include ADL logits, masks or buffers: they are of the exported (pruned) model,
which has none. FLOPs come from torch's FlopCounterMode on a fixed 10 s input (the encoder only).
"""
from __future__ import annotations

import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from study.adl import AdaptiveDropout
from study.config import ModelConfig
from study.model.conformer import BlockWidths, ConformerCTC

TEN_SECONDS_FRAMES = 1000  # 10 s at a 10 ms hop


def count_params(module: torch.nn.Module) -> int:
    """Model parameters, excluding any adaptive dropout logits."""
    adl = {id(p) for m in module.modules() if isinstance(m, AdaptiveDropout) for p in m.parameters()}
    return sum(p.numel() for p in module.parameters() if id(p) not in adl)


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


def analytic_params(cfg: ModelConfig, widths: list[BlockWidths], n_mels: int, vocab_size: int) -> dict[str, int]:
    """Total, encoder and per-location parameter counts implied by the widths alone."""
    sub_c = cfg.subsampling_channels
    front = (9 * sub_c + sub_c) + (9 * sub_c * sub_c + sub_c) + (sub_c * (((n_mels - 1) // 2 - 1) // 2) + 1) * cfg.d_model
    per_block = [block_params(cfg, w) for w in widths]
    by_location = {loc: sum(b[loc] for b in per_block) for loc in ("ffn", "mhsa", "conv")}
    encoder = front + sum(sum(b.values()) for b in per_block)
    return {"total": encoder + cfg.d_model * vocab_size + vocab_size, "encoder": encoder, **by_location}


def kept_units(widths: list[BlockWidths]) -> dict[str, int]:
    return {"ffn": sum(w.ffn1 + w.ffn2 for w in widths),
            "mhsa": sum(sum(w.query_dims) + sum(w.value_dims) for w in widths),
            "conv": sum(w.conv for w in widths)}


def encoder_inputs(n_mels: int, batch: int = 1, frames: int = TEN_SECONDS_FRAMES, device: str | torch.device = "cpu"):
    torch.manual_seed(0)
    return torch.randn(batch, frames, n_mels, device=device), torch.full((batch,), frames, device=device)


@torch.no_grad()
def encoder_flops(model: ConformerCTC) -> int:
    """FLOPs of one encoder forward pass on 10 s of audio at batch 1."""
    feats, lengths = encoder_inputs(model.n_mels, device=next(model.parameters()).device)
    model.eval()
    with FlopCounterMode(display=False) as counter:
        model.encoder(feats, lengths)
    return int(counter.get_total_flops())


@torch.no_grad()
def latency_ms(models: dict[str, ConformerCTC], repeats: int = 20, warmup: int = 3) -> dict[str, float]:
    """Median encoder latency (ms) at batch 1 on 10 s, the models interleaved so drift hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in models}
    inputs = {}
    for name, model in models.items():
        model.eval()
        inputs[name] = encoder_inputs(model.n_mels, device=next(model.parameters()).device)
        for _ in range(warmup):
            model.encoder(*inputs[name])
    for _ in range(repeats):
        for name, model in models.items():
            if inputs[name][0].is_cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            model.encoder(*inputs[name])
            if inputs[name][0].is_cuda:
                torch.cuda.synchronize()
            times[name].append((time.perf_counter() - start) * 1000)
    return {name: statistics.median(t) for name, t in times.items()}
