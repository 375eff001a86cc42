"""Cost of adaptive dropout in training, and what physical pruning buys at inference.

One run, one process: (1) training-step time (forward + backward + AdamW) of the default model
with ADLs at all three locations over the dense model, same batch, interleaved rounds: frame masks
with pooled noise (the default), with noise drawn fresh for every element (adl.noise = "fresh"),
with hard concrete gates (adl.gate), with straight-through masks, and utterance masks. (2) Encoder
latency at batch 1 on 10 s of audio of a pruned model against the dense one, beside their FLOP ratio.
The pruned model comes from --model (a model.pt exported by an adaptive-dropout trial) or, by default,
from ADL logits drawn so that about --prune of the units fall below the threshold.
Ends with one JSON line: {"adl_step_time_ratio", "adl_step_time_ratio_fresh_noise", "pruned_latency_speedup", "flop_reduction_ratio", ...}.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from study.config import ModelConfig  # noqa: E402
from study.data import text  # noqa: E402
from study.evaluation.accounting import count_params, encoder_flops, latency_ms  # noqa: E402
from study.method.adaptive_dropout import AdlSettings  # noqa: E402
from study.method.attach import adl_decisions, attach_adls  # noqa: E402
from study.method.pruning import prune  # noqa: E402
from study.model import ConformerCTC  # noqa: E402
from study.model.io import load_model  # noqa: E402

N_MELS = 80


def train_step_ms(model: ConformerCTC, feats: torch.Tensor, lengths: torch.Tensor, steps: int) -> list[float]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        log_probs, _ = model(feats, lengths)
        loss = -log_probs.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append((time.perf_counter() - start) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--frames", type=int, default=300, help="input frames (300 = 3 s)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per model and round")
    parser.add_argument("--prune", type=float, default=0.54, help="share of units pruned when no --model")
    parser.add_argument("--model", help="a model.pt exported by an adaptive-dropout trial")
    args = parser.parse_args()
    cfg = ModelConfig()
    torch.manual_seed(0)
    feats = torch.randn(args.batch, args.frames, N_MELS)
    lengths = torch.randint(args.frames // 2, args.frames + 1, (args.batch,))

    models = {"dense": ConformerCTC(cfg, N_MELS, text.vocab_size())}
    variants = {"adl-frame": AdlSettings(), "adl-frame-fresh": AdlSettings(noise="fresh"),
                "adl-hard-concrete": AdlSettings(gate="hard_concrete", tau=2 / 3),
                "adl-straight": AdlSettings(straight_through=True),
                "adl-utterance": AdlSettings(mask_granularity="utterance")}
    for name, settings in variants.items():
        torch.manual_seed(0)
        models[name] = ConformerCTC(cfg, N_MELS, text.vocab_size())
        attach_adls(models[name], ["ffn", "mhsa", "conv"], settings)
    for model in models.values():
        train_step_ms(model, feats, lengths, 2)  # warm-up
    times = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            times[name] += train_step_ms(model, feats, lengths, args.steps)
    step = {name: statistics.median(t) for name, t in times.items()}

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
    latency = latency_ms({"dense": dense, "pruned": pruned}, repeats=30)
    params = {"dense": count_params(dense), "pruned": count_params(pruned)}

    print(f"training step, batch {args.batch} x {args.frames} frames, {torch.get_num_threads()} threads (median ms)")
    print(f"{'model':<20}{'step ms':>10}{'ratio':>8}")
    for name in models:
        print(f"{name:<20}{step[name]:>10.1f}{step[name] / step['dense']:>8.3f}")
    print("\ninference, encoder, batch 1, 10 s of audio")
    print(f"{'model':<16}{'params':>12}{'GFLOPs':>10}{'latency ms':>12}")
    for name in ("dense", "pruned"):
        print(f"{name:<16}{params[name]:>12,}{flops[name] / 1e9:>10.3f}{latency[name]:>12.2f}")
    speedup, flop_ratio = latency["dense"] / latency["pruned"], flops["dense"] / flops["pruned"]
    print(f"speed-up {speedup:.2f}x against a FLOP reduction of {flop_ratio:.2f}x "
          f"({speedup / flop_ratio:.0%} of it)")
    print(json.dumps({"adl_step_time_ratio": round(step["adl-frame"] / step["dense"], 4),
                      "adl_step_time_ratio_fresh_noise": round(step["adl-frame-fresh"] / step["dense"], 4),
                      "adl_step_time_ratio_utterance": round(step["adl-utterance"] / step["dense"], 4),
                      "adl_step_time_ratio_hard_concrete": round(step["adl-hard-concrete"] / step["dense"], 4),
                      "adl_step_time_ratio_straight_through": round(step["adl-straight"] / step["dense"], 4),
                      "pruned_latency_speedup": round(speedup, 4), "flop_reduction_ratio": round(flop_ratio, 4),
                      "param_reduction": round(1 - params["pruned"] / params["dense"], 4)}))


if __name__ == "__main__":
    main()
