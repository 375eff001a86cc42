"""Training-step time of this project's Conformer blocks against torchaudio.models.Conformer.

Same widths, same batch (already subsampled frames, so both get the same input), forward +
backward + AdamW step, median over repeated steps after warm-up, both measured in one run.
Ends with one JSON line: {"step_time_ratio_vs_torchaudio": ours / torchaudio, ...}.

    python benchmarks/encoder_speed.py [--batch 16 --frames 150 --steps 20]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torchaudio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import quick  # noqa: E402 (benchmarks/quick.py, beside this script)
from study.config import ModelConfig  # noqa: E402
from study.model.conformer import ConformerBlock, padding_mask  # noqa: E402


class OurBlocks(torch.nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.blocks = torch.nn.ModuleList(ConformerBlock(cfg) for _ in range(cfg.num_blocks))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        mask = padding_mask(lengths, x.shape[1])
        for block in self.blocks:
            x = block(x, mask)
        return x


class TorchaudioBlocks(torch.nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.conformer = torchaudio.models.Conformer(
            input_dim=cfg.d_model, num_heads=cfg.num_heads, ffn_dim=cfg.ffn_dim, num_layers=cfg.num_blocks,
            depthwise_conv_kernel_size=cfg.conv_kernel, dropout=cfg.dropout)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.conformer(x, lengths)[0]


def step_times(model: torch.nn.Module, x: torch.Tensor, lengths: torch.Tensor, steps: int, warmup: int) -> list[float]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        out = model(x, lengths)
        loss = out.float().pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--frames", type=int, default=150, help="frames after subsampling (150 = 6 s of audio)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    args = quick.parse_args(parser, batch=2, frames=40, steps=2, warmup=1)
    cfg = ModelConfig()  # the default recipe's widths
    cfg.conv_channels = cfg.d_model  # torchaudio's conv module keeps d_model channels
    torch.manual_seed(0)
    x = torch.randn(args.batch, args.frames, cfg.d_model)
    lengths = torch.randint(args.frames // 2, args.frames + 1, (args.batch,))
    lengths[0] = args.frames
    models = {"ours": OurBlocks(cfg), "torchaudio": TorchaudioBlocks(cfg)}
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    # Interleave rounds so drift in machine load hits both alike.
    times = {name: [] for name in models}
    for _ in range(3):
        for name, model in models.items():
            times[name] += step_times(model, x, lengths, args.steps // 3 + 1, args.warmup)
    median = {name: statistics.median(t) * 1000 for name, t in times.items()}
    print(f"Conformer blocks, d_model={cfg.d_model} heads={cfg.num_heads} ffn={cfg.ffn_dim} "
          f"kernel={cfg.conv_kernel} blocks={cfg.num_blocks}; batch {args.batch} x {args.frames} frames; "
          f"{torch.get_num_threads()} threads, device cpu")
    print(f"{'encoder':<12}{'params':>12}{'step ms (median)':>20}")
    for name in models:
        print(f"{name:<12}{params[name]:>12,}{median[name]:>20.1f}")
    ratio = median["ours"] / median["torchaudio"]
    print(f"ratio ours / torchaudio: {ratio:.3f}")
    print(json.dumps({"step_time_ratio_vs_torchaudio": round(ratio, 4), "ours_ms": round(median["ours"], 2),
                      "torchaudio_ms": round(median["torchaudio"], 2)}))


if __name__ == "__main__":
    main()
