"""Cost of adaptive dropout in training, and what physical pruning buys at inference.

One run, one process: (1) training-step time (forward + backward + AdamW) of the default model
with ADLs at all three locations over the dense model, same batch, the models taking turns step by step: frame masks
with pooled noise (the default), with noise drawn fresh for every element (adl.noise = "fresh"),
with hard concrete gates (adl.gate), with straight-through masks, and utterance masks; and the floor of
any frame-mask implementation: each ADL reduced to one multiply by its logits (no noise, no sigmoid),
which a fused kernel would still have to do forward and backward. (2) Encoder
latency at batch 1 on 10 s of audio of a pruned model against the dense one, beside their FLOP ratio.
The pruned model comes from --model (a model.pt exported by an adaptive-dropout trial) or, by default,
from ADL logits drawn so that about --prune of the units fall below the threshold.
Ends with one JSON line: {"adl_step_time_ratio", "adl_step_time_ratio_fresh_noise", "adl_step_time_ratio_multiply_only",
"pruned_latency_speedup", "flop_reduction_ratio", ...}.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import quick  # noqa: E402 (benchmarks/quick.py, beside this script)
from study.config import ModelConfig  # noqa: E402
from study.data import text  # noqa: E402
from study.evaluation.accounting import count_params, encoder_flops, latency_ms  # noqa: E402
from study.method.adaptive_dropout import AdaptiveDropout, AdlSettings  # noqa: E402
from study.method.attach import adl_decisions, adl_layers, attach_adls  # noqa: E402
from study.method.pruning import prune  # noqa: E402
from study.model import ConformerCTC  # noqa: E402
from study.model.io import load_model  # noqa: E402

N_MELS = 80


def multiply_only(layer: AdaptiveDropout) -> None:
    """The layer's forward becomes x * beta: the mask's unavoidable work (its multiply; backward, the
    input's gradient and the logits' sum over frames) without drawing noise or taking a sigmoid."""
    layer.forward = lambda x: x * layer.beta


def train_step_ms(model: ConformerCTC, optimizer: torch.optim.Optimizer, feats: torch.Tensor,
                  lengths: torch.Tensor) -> float:
    model.train()
    start = time.perf_counter()
    log_probs, _ = model(feats, lengths)
    loss = -log_probs.mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return (time.perf_counter() - start) * 1000


def paired_step_ratios(models: dict[str, ConformerCTC], feats: torch.Tensor, lengths: torch.Tensor,
                       steps: int, step_fns: dict[str, Callable] | None = None) -> tuple[dict[str, float], dict[str, float]]:
    """Median step ms per model, and the median over steps of each model's time over the dense model's
    in the same round: the models take turns step by step, so a drift in the machine's speed (seen:
    +-4% between runs) falls on every model alike. `step_fns`: a step other than train_step_ms, by name."""
    optimizers = {name: torch.optim.AdamW(model.parameters(), lr=1e-4) for name, model in models.items()}
    step_of = {name: (step_fns or {}).get(name, train_step_ms) for name in models}
    for name, model in models.items():  # warm-up, and AdamW's state allocated outside the timing
        for _ in range(2):
            step_of[name](model, optimizers[name], feats, lengths)
    times = {name: [] for name in models}
    for _ in range(steps):
        for name, model in models.items():
            times[name].append(step_of[name](model, optimizers[name], feats, lengths))
    ratios = {name: statistics.median(t / d for t, d in zip(times[name], times["dense"])) for name in models}
    return {name: statistics.median(t) for name, t in times.items()}, ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--frames", type=int, default=300, help="input frames (300 = 3 s)")
    parser.add_argument("--steps", type=int, default=60, help="timed steps per model, taken in turn")
    parser.add_argument("--prune", type=float, default=0.54, help="share of units pruned when no --model")
    parser.add_argument("--model", help="a model.pt exported by an adaptive-dropout trial")
    args = quick.parse_args(parser, batch=2, frames=60, steps=2)
    cfg = ModelConfig()
    torch.manual_seed(0)
    feats = torch.randn(args.batch, args.frames, N_MELS)
    lengths = torch.randint(args.frames // 2, args.frames + 1, (args.batch,))

    models = {"dense": ConformerCTC(cfg, N_MELS, text.vocab_size())}
    variants = {"adl-frame": AdlSettings(), "adl-frame-fresh": AdlSettings(noise="fresh"),
                "adl-hard-concrete": AdlSettings(gate="hard_concrete", tau=2 / 3),
                "adl-straight": AdlSettings(straight_through=True),
                "adl-utterance": AdlSettings(mask_granularity="utterance"), "multiply-only": AdlSettings()}
    for name, settings in variants.items():
        torch.manual_seed(0)
        models[name] = ConformerCTC(cfg, N_MELS, text.vocab_size())
        attach_adls(models[name], ["ffn", "mhsa", "conv"], settings)
    for layer in adl_layers(models["multiply-only"]):
        multiply_only(layer)
    step, ratio = paired_step_ratios(models, feats, lengths, args.steps)

    if args.model:
        pruned, _ = load_model(args.model)
        dense = ConformerCTC(ModelConfig(**torch.load(args.model, weights_only=True)["model_config"]),
                             pruned.n_mels, pruned.head.out_features).eval()
    else:
        dense = models["dense"].eval()
        source = models["adl-frame"].eval()
        for layer in [m for m in source.modules() if hasattr(m, "beta")]:
            layer.beta.data = torch.randn_like(layer.beta) + torch.distributions.Normal(0, 1).icdf(
                torch.tensor(args.prune))  # about --prune of the logits fall below 0 (p < 0.5)
        pruned, _ = prune(source, cfg, adl_decisions(source))
    flops = {"dense": encoder_flops(dense), "pruned": encoder_flops(pruned)}
    latency = latency_ms({"dense": dense, "pruned": pruned}, rounds=6)
    params = {"dense": count_params(dense), "pruned": count_params(pruned)}

    print(f"training step, batch {args.batch} x {args.frames} frames, {torch.get_num_threads()} threads (median ms)")
    print(f"{'model':<20}{'step ms':>10}{'ratio':>8}   (median of per-step ratios to dense)")
    for name in models:
        print(f"{name:<20}{step[name]:>10.1f}{ratio[name]:>8.3f}")
    print("\ninference, encoder, batch 1, 10 s of audio")
    print(f"{'model':<16}{'params':>12}{'GFLOPs':>10}{'latency ms':>12}")
    for name in ("dense", "pruned"):
        print(f"{name:<16}{params[name]:>12,}{flops[name] / 1e9:>10.3f}{latency[name]:>12.2f}")
    speedup, flop_ratio = latency["dense"] / latency["pruned"], flops["dense"] / flops["pruned"]
    print(f"speed-up {speedup:.2f}x against a FLOP reduction of {flop_ratio:.2f}x "
          f"({speedup / flop_ratio:.0%} of it)")
    print(json.dumps({"adl_step_time_ratio": round(ratio["adl-frame"], 4),
                      "adl_step_time_ratio_fresh_noise": round(ratio["adl-frame-fresh"], 4),
                      "adl_step_time_ratio_utterance": round(ratio["adl-utterance"], 4),
                      "adl_step_time_ratio_hard_concrete": round(ratio["adl-hard-concrete"], 4),
                      "adl_step_time_ratio_straight_through": round(ratio["adl-straight"], 4),
                      "adl_step_time_ratio_multiply_only": round(ratio["multiply-only"], 4),
                      "pruned_latency_speedup": round(speedup, 4), "flop_reduction_ratio": round(flop_ratio, 4),
                      "param_reduction": round(1 - params["pruned"] / params["dense"], 4)}))


if __name__ == "__main__":
    main()
