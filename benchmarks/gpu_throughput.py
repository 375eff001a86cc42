"""GPU training throughput of the LibriSpeech model, and what the input pipeline alone delivers.

The model, batch size and SpecAugment of `experiments/librispeech.toml` (26M parameters, bf16 autocast
on a GPU), trained on the built-in synthetic corpus (no LibriSpeech needed; its utterances are short,
about 2.5 s against LibriSpeech's 12 s, so per-step overheads weigh more here). Each measure runs a
whole epoch over --utterances after one warm-up epoch:
  train     audio seconds trained per wall second (the full step: pipeline, forward, backward, AdamW);
  pipeline  audio seconds per second the input pipeline alone delivers to the device (pad and pin in
            a background thread, copy, normalise, SpecAugment), which must be >= 2x `train`.
On a machine without a GPU the pipeline part still runs (the training part only with --train-on-cpu).
Ends with one JSON line: {"train_audio_s_per_s": ..., "pipeline_audio_s_per_s": ..., "device": ...}.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import quick  # noqa: E402 (benchmarks/quick.py, beside this script)
from study.data.features import mean_std  # noqa: E402
from study.data.prepared import prepare_data  # noqa: E402
from study.data.synthetic import build_synthetic_corpus  # noqa: E402
from study.data.tokenizer import build_tokenizer  # noqa: E402
from study.evaluation.accounting import device_name, synchronize  # noqa: E402
from study.sweep.experiment_file import load_experiment  # noqa: E402
from study.training import PhaseClock, Trainer, resolve_device, use_device  # noqa: E402
from study.trial_context import build_model  # noqa: E402


def timed(work, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    work()
    synchronize(device)
    return time.perf_counter() - start


def profile_epoch(trainer: Trainer, device: torch.device) -> None:
    """Where a training epoch's time goes: the busiest operators, and how much of the wall time the
    device spends in kernels (the rest is launches, host work and waiting for data)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    on_gpu = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        trainer.train_epoch(1)
        synchronize(device)
    wall = time.perf_counter() - start
    events = prof.key_averages()
    print(events.table(sort_by="self_cuda_time_total" if on_gpu else "self_cpu_time_total", row_limit=25))
    if on_gpu:
        # the host's side: dispatch, launches and waits (cudaStreamSynchronize, blocking copies)
        print(events.table(sort_by="self_cpu_time_total", row_limit=20))
        # kernels only: the operator rows repeat their kernels' time
        busy = sum(e.self_device_time_total for e in prof.events() if e.device_type == DeviceType.CUDA) / 1e6
        print(f"profiled epoch: {wall:.2f} s wall (with profiler overhead), {busy:.2f} s of kernels "
              f"({busy / wall:.0%} busy); {trainer.steps_per_epoch} steps")


def phase_table(trainer: Trainer, epoch: int, device: torch.device) -> None:
    """Host time per phase of one more epoch's steps (no profiler overhead): dispatch, or waiting."""
    trainer.clock = PhaseClock()
    wall = timed(lambda: trainer.train_epoch(epoch), device)
    trainer.clock.mark("device tail")  # after the last step: waiting for the queued kernels
    seconds, steps = trainer.clock.seconds, trainer.steps_per_epoch
    trainer.clock = None
    print(f"{'phase':14} {'ms/step':>8} {'share':>6}")
    for phase, total in seconds.items():
        print(f"{phase:14} {1000 * total / steps:8.1f} {total / wall:6.0%}")
    print(f"{'epoch':14} {1000 * wall / steps:8.1f} ({steps} steps)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default=str(ROOT / "experiments" / "librispeech.toml"))
    parser.add_argument("--utterances", type=int, default=3000, help="built-in corpus training utterances")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", action="store_true", help="train.compile = true")
    parser.add_argument("--batch-seconds", type=float, help="train.batch_seconds (default: the experiment's)")
    parser.add_argument("--train-on-cpu", action="store_true", help="also time training without a GPU (slow)")
    parser.add_argument("--cache-dir", default="runs/cache")
    parser.add_argument("--epochs", type=int, default=1, help="timed training epochs (after the warm-up one)")
    parser.add_argument("--profile", action="store_true", help="print a profile of one more training epoch")
    parser.add_argument("--phases", action="store_true", help="print the host time per phase of one more epoch")
    args = quick.parse_args(parser, experiment=quick.SMOKE, utterances=24, epochs=1)

    cfg = load_experiment(args.experiment).config(extra={
        "data.source": "synthetic", "data.extra_test_subsets": [], "data.cache_dir": args.cache_dir, "data.synthetic.train_utterances": args.utterances,
        "train.device": args.device, "train.compile": args.compile, "train.threads": 0,
        **({"train.batch_seconds": args.batch_seconds} if args.batch_seconds else {})})
    device = resolve_device(cfg.train.device)
    use_device(device)
    start = time.perf_counter()
    build_synthetic_corpus(cfg.data.synthetic, Path(cfg.data.cache_dir), workers=len(os.sched_getaffinity(0)))
    train = prepare_data(cfg)["train"]
    tokenizer = build_tokenizer(cfg.text, train.transcripts, cfg.data.cache_dir)
    prep_seconds = time.perf_counter() - start
    mean, std = mean_std(train.features)
    model = build_model(cfg, tokenizer.vocab_size)
    params = sum(p.numel() for p in model.parameters())
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, model, train, tokenizer, mean, std, Path(tmp) / "c.pt", device, epochs=args.epochs + 3)
        audio = sum(train.utterances[i].duration for i in trainer.train_indices)
        batches = trainer._epoch_batches(0)

        def pipeline_epoch() -> None:
            for _, feats in trainer.device_batches(batches):
                pass
        timed(pipeline_epoch, device)  # warm-up: allocator, pinned-memory pool
        pipeline_rate = audio / timed(pipeline_epoch, device)
        train_rate = None
        if device.type == "cuda" or args.train_on_cpu:
            trainer.train_epoch(0)  # warm-up: cuDNN/cuBLAS choices, compilation
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            train_rate = args.epochs * audio / timed(
                lambda: [trainer.train_epoch(1 + e) for e in range(args.epochs)], device)
            if args.phases:
                phase_table(trainer, args.epochs + 1, device)
            if args.profile:
                profile_epoch(trainer, device)

    name = device_name(device)
    lengths = trainer.train_data.lengths
    shapes = {(len(b), max(lengths[i] for i in b)) for b in batches}
    print(f"device {name}; model {params / 1e6:.1f}M parameters; {len(trainer.train_indices)} utterances, "
          f"{audio / 3600:.2f} h of audio, {len(batches)} batches of <= {cfg.train.batch_seconds:.0f} s "
          f"({len(shapes)} distinct shapes); "
          f"corpus and features ready in {prep_seconds:.0f} s")
    print(f"{'measure':10} {'audio s/s':>10}")
    print(f"{'pipeline':10} {pipeline_rate:10.0f}")
    print(f"{'train':10} {train_rate:10.0f}" if train_rate else f"{'train':10} {'(no GPU)':>10}")
    if train_rate:
        print(f"pipeline / train = {pipeline_rate / train_rate:.1f}x (goal >= 2); "
              f"100 epochs of train-clean-100 (100.6 h) would take {100 * 100.6 * 3600 / train_rate / 3600:.1f} h")
        if device.type == "cuda":
            print(f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")
    print(json.dumps({"train_audio_s_per_s": round(train_rate, 1) if train_rate else None,
                      "pipeline_audio_s_per_s": round(pipeline_rate, 1), "device": name}))


if __name__ == "__main__":
    main()
