"""Batch-1 latency on 10 s of audio of a dense and a pruned model in eager PyTorch, compiled PyTorch
(torch.compile) and ONNX Runtime (the optional `deploy` extra), measured in one run, 2 threads.

By default the models are the main recipe's shape (experiments/dense.toml) with random weights and
the pruned one cut by random adaptive-dropout decisions to about --reduction fewer parameters
(latency does not depend on the weights' values); --dense and --pruned take trained model.pt files.
The latency is of the whole exported graph (normalisation, front end, encoder, head), the median of
steady-state calls (`steady_times`: each model called several times in a row, as a deployed model
serving requests, the models taking turns round by round); each runtime's pruned/dense speed-up sits
beside the FLOP reduction.
Ends with one JSON line: {"latency_ms": {runtime: {dense, pruned}}, "speedup": {runtime: ...},
"flop_reduction_ratio": ..., "params_reduction": ..., "fastest_runtime": ..., "pruned_latency_speedup": ...}.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import quick  # noqa: E402 (benchmarks/quick.py, beside this script)
from study.evaluation.accounting import encoder_flops, steady_times  # noqa: E402
from study.export import Deployable, export, run_exported  # noqa: E402
from study.method.adaptive_dropout import AdlSettings  # noqa: E402
from study.method.attach import adl_decisions, attach_adls  # noqa: E402
from study.method.pruning import prune  # noqa: E402
from study.model.conformer import ConformerCTC, dense_widths  # noqa: E402
from study.model.io import load_model, save_model  # noqa: E402
from study.sweep.experiment_file import load_experiment  # noqa: E402


def random_pair(experiment: str, reduction: float, folder: Path) -> tuple[Path, Path]:
    """model.pt files of the recipe's dense model and of a copy pruned by random decisions."""
    cfg = load_experiment(experiment).config().model
    torch.manual_seed(0)
    dense = ConformerCTC(cfg, 80, 29).eval()  # character head: the random model needs no BPE file
    extra = {"feature_mean": torch.zeros(80), "feature_std": torch.ones(80), "tokenizer": {"units": "char"}}
    save_model(folder / "dense.pt", cfg, dense, dense_widths(cfg), extra)
    for layer in attach_adls(dense, ["ffn", "mhsa", "conv"], AdlSettings()):
        keep = torch.rand_like(layer.beta) >= reduction
        layer.beta.data = torch.where(keep, 5.0, -5.0)
    pruned, widths = prune(dense.eval(), cfg, adl_decisions(dense))
    save_model(folder / "pruned.pt", cfg, pruned, widths, extra)
    return folder / "dense.pt", folder / "pruned.pt"


def model_pair_arguments(doc: str, rounds: int) -> argparse.Namespace:
    """The dense/pruned pair a latency benchmark compares: two model.pt files (--dense, --pruned), or the
    recipe's shape pruned by random decisions to about --reduction fewer parameters; 2 threads."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default=str(ROOT / "experiments" / "dense.toml"))
    parser.add_argument("--dense", type=Path)
    parser.add_argument("--pruned", type=Path)
    parser.add_argument("--reduction", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=rounds, help="rounds of 5 timed calls per model (steady_times)")
    torch.set_num_threads(2)
    return quick.parse_args(parser, experiment=quick.SMOKE, rounds=1)


def main() -> None:
    args = model_pair_arguments(__doc__, rounds=30)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = {"dense": args.dense, "pruned": args.pruned}
        if not (args.dense and args.pruned):
            files["dense"], files["pruned"] = random_pair(args.experiment, args.reduction, tmp)
        calls, flops, params = {}, {}, {}
        for name, path in files.items():
            model, saved = load_model(path)
            flops[name], params[name] = encoder_flops(model), sum(p.numel() for p in model.parameters())
            eager = Deployable(model, saved["feature_mean"], saved["feature_std"]).eval()
            onnx_path = export(path, tmp / f"{name}.onnx", "onnx")
            calls[("eager", name)] = lambda f, n, m=eager: m(f, n)[0]
            calls[("compiled", name)] = torch.compile(lambda f, n, m=eager: m(f, n)[0], dynamic=False)
            calls[("onnxruntime", name)] = run_exported(onnx_path, "onnx", threads=torch.get_num_threads())
        feats, lengths = torch.randn(1, 1000, 80), torch.tensor([1000])  # 10 s at a 10 ms hop
        with torch.inference_mode():
            timed = steady_times({key: lambda call=call: call(feats, lengths) for key, call in calls.items()}, args.rounds)
        times = {key: [ms for ms, _ in values] for key, values in timed.items()}
    runtimes = ("eager", "compiled", "onnxruntime")
    latency = {r: {n: round(statistics.median(times[(r, n)]), 2) for n in ("dense", "pruned")} for r in runtimes}
    speedup = {r: round(latency[r]["dense"] / latency[r]["pruned"], 3) for r in runtimes}
    flop_ratio = flops["dense"] / flops["pruned"]
    fastest = min(runtimes, key=lambda r: latency[r]["pruned"])
    print(f"params: dense {params['dense']:,}, pruned {params['pruned']:,} ({1 - params['pruned'] / params['dense']:.1%} fewer); "
          f"encoder FLOPs ratio {flop_ratio:.2f}x")
    print(f"{'runtime':12} {'dense ms':>9} {'pruned ms':>10} {'speed-up':>9} {'of FLOP ratio':>14}")
    for r in runtimes:
        print(f"{r:12} {latency[r]['dense']:9.2f} {latency[r]['pruned']:10.2f} {speedup[r]:8.2f}x {speedup[r] / flop_ratio:13.0%}")
    print(f"fastest for the pruned model: {fastest} (goal: speed-up >= 0.8 x FLOP ratio = {0.8 * flop_ratio:.2f}x)")
    print(json.dumps({"latency_ms": latency, "speedup": speedup, "flop_reduction_ratio": round(flop_ratio, 3),
                      "params_reduction": round(1 - params["pruned"] / params["dense"], 4),
                      "fastest_runtime": fastest, "pruned_latency_speedup": speedup[fastest]}))


if __name__ == "__main__":
    main()
