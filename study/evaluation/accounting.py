"""Parameter, FLOP and latency accounting of a final model, the same for every method.

Counts never include ADL logits, masks or buffers: they are of the exported (pruned) model,
which has none; the counts implied by widths alone are in study/model/size.py. FLOPs come from
torch's FlopCounterMode on a fixed 10 s input (the encoder only).
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch

from study.config import ModelConfig
from study.method.adaptive_dropout import AdaptiveDropout
from study.model.conformer import BlockWidths, ConformerCTC, dense_widths
from study.model.size import analytic_params, kept_units, nonzero_params
from study.names import LOCATIONS

TEN_SECONDS_FRAMES = 1000  # 10 s at a 10 ms hop


def count_params(module: torch.nn.Module) -> int:
    """Model parameters, excluding any adaptive dropout logits."""
    adl = {id(p) for m in module.modules() if isinstance(m, AdaptiveDropout) for p in m.parameters()}
    return sum(p.numel() for p in module.parameters() if id(p) not in adl)


def encoder_inputs(n_mels: int, batch: int = 1, frames: int = TEN_SECONDS_FRAMES, device: str | torch.device = "cpu"):
    torch.manual_seed(0)
    return torch.randn(batch, frames, n_mels, device=device), torch.full((batch,), frames, device=device)


@torch.no_grad()
def encoder_flops(model: ConformerCTC) -> int:
    """FLOPs of one encoder forward pass on 10 s of audio at batch 1."""
    from torch.utils.flop_counter import FlopCounterMode  # here: importing it loads triton, 0.3 s a process
    feats, lengths = encoder_inputs(model.n_mels, device=next(model.parameters()).device)
    model.eval()
    with FlopCounterMode(display=False) as counter:
        model.encoder(feats, lengths)
    return int(counter.get_total_flops())


def synchronize(device: torch.device) -> None:
    """Waits for `device`'s queued work; a bare torch.cuda.synchronize() would wait on (and open a
    context on) the current GPU, which is GPU 0 in a worker placed on another."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    """What latency was measured on, for the run's tags: the GPU's name, or the CPU and thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def steady_times(calls: dict[Any, Callable[[], Any]], rounds: int, block: int = 5, warmup: int = 2) -> dict:
    """Steady-state wall times: {key: [(ms, what the call returned), ...]} for each zero-argument call
    (a call on a GPU waits for its own work before it returns).

    Each round runs every call `warmup` times untimed, then `block` times timed, one call after the
    other: a deployed model serves requests back to back, with its weights in the caches. Rounds
    interleave the calls so that drift in the machine's speed hits all of them alike. (Timing single
    calls in turn measured each model just after another had evicted it from the caches, which slowed
    the smaller, pruned model the most: the trained 50% model's speed-up was 1.21x against 1.26x.)"""
    times: dict = {key: [] for key in calls}
    for _ in range(rounds):
        for key, call in calls.items():
            for i in range(warmup + block):
                start = time.perf_counter()
                value = call()
                if i >= warmup:
                    times[key].append(((time.perf_counter() - start) * 1000, value))
    return times


@torch.no_grad()
def latency_ms(models: dict[str, ConformerCTC], rounds: int = 4) -> dict[str, float]:
    """Median encoder latency (ms) at batch 1 on 10 s, steady state (`steady_times`)."""
    def timed_call(model: ConformerCTC) -> Callable[[], None]:
        device = next(model.parameters()).device
        inputs = encoder_inputs(model.n_mels, device=device)

        def call() -> None:
            model.encoder(*inputs)
            synchronize(device)
        return call

    times = steady_times({name: timed_call(model.eval()) for name, model in models.items()}, rounds)
    return {name: statistics.median(ms for ms, _ in t) for name, t in times.items()}


def size_metrics(model: ConformerCTC, model_cfg: ModelConfig, widths: list[BlockWidths] | None,
                 dense: ConformerCTC) -> dict[str, float]:
    """Parameters (checked against the analytic count), FLOPs and latency of a final model beside dense.

    `widths` None means unstructured pruning: nonzero parameters are counted, and FLOPs and latency
    are those of its dense shapes, so it never shows a speed-up it does not have."""
    dense_total = count_params(dense)
    if widths is None:
        total, encoder = nonzero_params(model), nonzero_params(model.encoder)
        widths = dense_widths(model_cfg)
        analytic = None
    else:
        total, encoder = count_params(model), count_params(model.encoder)
        analytic = analytic_params(model_cfg, widths, model.n_mels, model.head.out_features)
        if analytic["total"] != total:
            raise AssertionError(f"parameter count {total} differs from the analytic count {analytic['total']}")
    latency = latency_ms({"model": model, "dense": dense})
    metrics = {"params/total": total, "params/encoder": encoder, "params/dense_total": dense_total,
               "params/reduction": 1.0 - total / dense_total, "flops/encoder_10s": encoder_flops(model),
               "flops/dense_encoder_10s": encoder_flops(dense), "latency/ms_b1_10s": latency["model"],
               "latency/dense_ms_b1_10s": latency["dense"]}
    for loc in LOCATIONS:
        if analytic:
            metrics[f"params/kept/{loc}"] = analytic[loc]  # parameters the location still owns
        metrics[f"units/kept/{loc}"] = kept_units(widths)[loc]
    return metrics
