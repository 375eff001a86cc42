"""What distillation from the dense teacher (adl.distill, prune.distill) costs per training step.

One run, one process: the training step (forward + backward + AdamW) of the default model alone, with
the teacher's output term added (a forward pass of a second default-size model without gradients, and
the frame-level KL), and with the block-output term beside it (adl.distill_hidden: the MSE between every
block's outputs), taking turns step by step on the same batch. Ends with one JSON line:
{"distill_step_time_ratio", "hidden_step_time_ratio", "step_ms", "distilled_step_ms", "hidden_step_ms"}.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import quick  # noqa: E402 (benchmarks/quick.py, beside this script)
from adl_overhead import N_MELS, paired_step_ratios  # noqa: E402
from study.config import ModelConfig  # noqa: E402
from study.data import text  # noqa: E402
from study.method.distillation import Distiller  # noqa: E402
from study.model import ConformerCTC  # noqa: E402


def distilled_step(distiller: Distiller):
    def step_ms(model: ConformerCTC, optimizer: torch.optim.Optimizer, feats: torch.Tensor, lengths: torch.Tensor) -> float:
        model.train()
        start = time.perf_counter()
        log_probs, out_lengths = model(feats, lengths)
        loss = -log_probs.mean() + distiller.loss(feats, lengths, log_probs, out_lengths)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return (time.perf_counter() - start) * 1000
    return step_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--frames", type=int, default=300, help="input frames (300 = 3 s)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per model, taken in turn")
    args = quick.parse_args(parser, batch=2, frames=60, steps=2)
    torch.manual_seed(0)
    feats = torch.randn(args.batch, args.frames, N_MELS)
    lengths = torch.randint(args.frames // 2, args.frames + 1, (args.batch,))
    models = {name: ConformerCTC(ModelConfig(), N_MELS, text.vocab_size()) for name in ("dense", "distilled", "hidden")}
    teacher = Distiller(ConformerCTC(ModelConfig(), N_MELS, text.vocab_size()), 1.0)
    with_blocks = Distiller(ConformerCTC(ModelConfig(), N_MELS, text.vocab_size()), 1.0, hidden=1.0)
    with_blocks.watch(models["hidden"])
    step, ratio = paired_step_ratios(models, feats, lengths, args.steps,
                                     {"distilled": distilled_step(teacher), "hidden": distilled_step(with_blocks)})
    print(f"training step, batch {args.batch} x {args.frames} frames, {torch.get_num_threads()} threads (median ms)")
    print(f"{'step':<28}{'ms':>10}{'ratio':>8}")
    print(f"{'CTC alone':<28}{step['dense']:>10.1f}{1.0:>8.3f}")
    print(f"{'CTC + distillation':<28}{step['distilled']:>10.1f}{ratio['distilled']:>8.3f}")
    print(f"{'CTC + distillation + blocks':<28}{step['hidden']:>10.1f}{ratio['hidden']:>8.3f}")
    print(json.dumps({"distill_step_time_ratio": round(ratio["distilled"], 4),
                      "hidden_step_time_ratio": round(ratio["hidden"], 4), "step_ms": round(step["dense"], 1),
                      "distilled_step_ms": round(step["distilled"], 1), "hidden_step_ms": round(step["hidden"], 1)}))


if __name__ == "__main__":
    main()
