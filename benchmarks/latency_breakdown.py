"""Where the batch-1 time of a dense and a pruned model goes, part by part, beside each part's FLOPs.

Eager PyTorch, 2 threads, 10 s of audio, steady state (`steady_times`). Each part of the encoder (front end,
and per kind over all blocks: FFN, self-attention, conv module, block LayerNorm; then the CTC head) is
timed by forward hooks around it, which add a few microseconds per call; the table gives each part's
median time per forward pass for both models, its speed-up, and its FLOP ratio, so the parts that
pruning shrinks on paper but not on the clock stand out, as do the fixed ones. Models: the main
recipe's shape with random weights, pruned by random adaptive-dropout decisions to about
--reduction fewer parameters (as benchmarks/deploy_latency.py), or --dense/--pruned model.pt files.
Ends with one JSON line: {"parts": {part: {"dense_ms", "pruned_ms", "flop_ratio"}}, "total_speedup", ...}.
"""
from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from deploy_latency import model_pair_arguments, random_pair  # noqa: E402

from study.evaluation.accounting import encoder_inputs, steady_times  # noqa: E402
from study.model.conformer import ConformerCTC  # noqa: E402
from study.model.io import load_model  # noqa: E402

PARTS = ("front end", "ffn", "mhsa", "conv", "block norm", "head")


def parts(model: ConformerCTC) -> dict[str, list[torch.nn.Module]]:
    blocks = model.encoder.blocks
    return {"front end": [model.encoder.subsampling], "ffn": [m for b in blocks for m in (b.ffn1, b.ffn2)],
            "mhsa": [b.mhsa for b in blocks], "conv": [b.conv for b in blocks],
            "block norm": [b.norm for b in blocks], "head": [model.head]}


class PartTimer:
    """Forward hooks that add up the wall time spent inside each part during one forward pass."""

    def __init__(self, model: ConformerCTC):
        self.totals: dict[str, float] = defaultdict(float)
        self.handles = []
        for name, modules in parts(model).items():
            for module in modules:
                self.handles.append(module.register_forward_pre_hook(self._start))
                self.handles.append(module.register_forward_hook(lambda m, i, o, name=name: self._stop(m, name)))
        self.started: dict[int, float] = {}

    def _start(self, module, inputs) -> None:
        self.started[id(module)] = time.perf_counter()

    def _stop(self, module, name: str) -> None:
        self.totals[name] += time.perf_counter() - self.started.pop(id(module))


def part_flops(model: ConformerCTC, feats: torch.Tensor, lengths: torch.Tensor) -> dict[str, int]:
    """FLOPs per part: FlopCounterMode's per-module figures, summed over each part's modules."""
    with FlopCounterMode(display=False) as counter:
        model(feats, lengths)
    by_module = counter.get_flop_counts()
    names = {module: name for name, module in model.named_modules()}
    prefix = type(model).__name__
    return {part: sum(sum(by_module.get(f"{prefix}.{names[m]}", {}).values()) for m in modules)
            for part, modules in parts(model).items()}


def main() -> None:
    args = model_pair_arguments(__doc__, rounds=20)
    with tempfile.TemporaryDirectory() as tmp:
        paths = (args.dense, args.pruned) if args.dense and args.pruned else random_pair(args.experiment, args.reduction, Path(tmp))
        models = {name: load_model(path)[0].eval() for name, path in zip(("dense", "pruned"), paths)}
    feats, lengths = encoder_inputs(models["dense"].n_mels)
    flops = {name: part_flops(model, feats, lengths) for name, model in models.items()}
    timers = {name: PartTimer(model) for name, model in models.items()}

    def call(name: str) -> dict[str, float]:
        timers[name].totals.clear()
        models[name](feats, lengths)
        return dict(timers[name].totals)

    with torch.inference_mode():
        timed = steady_times({name: lambda name=name: call(name) for name in models}, args.rounds)
    totals = {name: [ms / 1e3 for ms, _ in values] for name, values in timed.items()}
    per_call = {name: {part: [parts_s.get(part, 0.0) for _, parts_s in values] for part in PARTS}
                for name, values in timed.items()}
    ms = {name: {part: 1e3 * statistics.median(per_call[name][part]) for part in PARTS} for name in models}
    total = {name: 1e3 * statistics.median(totals[name]) for name in models}
    for name in models:
        ms[name]["other"] = total[name] - sum(ms[name].values())  # positions, masks, log-softmax, hooks
    rows = {}
    print(f"batch 1, 10 s of audio, eager PyTorch, {torch.get_num_threads()} threads, median of {5 * args.rounds} steady calls")
    print(f"{'part':<12}{'dense ms':>10}{'pruned ms':>11}{'speed-up':>10}{'FLOP ratio':>12}{'share of dense':>16}")
    for part in (*PARTS, "other"):
        d, p = ms["dense"][part], ms["pruned"][part]
        f = flops["dense"].get(part, 0) / flops["pruned"][part] if flops["pruned"].get(part) else float("nan")
        rows[part] = {"dense_ms": round(d, 3), "pruned_ms": round(p, 3), "flop_ratio": round(f, 3)}
        print(f"{part:<12}{d:>10.2f}{p:>11.2f}{d / p if p > 0 else float('nan'):>9.2f}x{f:>11.2f}x{d / total['dense']:>15.0%}")
    flop_total = sum(flops["dense"].values()) / sum(flops["pruned"].values())
    speedup = total["dense"] / total["pruned"]
    print(f"{'total':<12}{total['dense']:>10.2f}{total['pruned']:>11.2f}{speedup:>9.2f}x{flop_total:>11.2f}x")
    print(json.dumps({"parts": rows, "total_ms": {k: round(v, 3) for k, v in total.items()},
                      "total_speedup": round(speedup, 4), "flop_reduction_ratio": round(flop_total, 4)}))


if __name__ == "__main__":
    main()
