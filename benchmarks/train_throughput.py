"""Training throughput: audio seconds trained per wall second, the old recipe against the new one.

Both recipes are `experiments/dense.toml` (its corpus and model widths); the old one overrides what
the new one changed: character units, the 4x Conv2d front end of 32 channels and 16 s batches (OLD).
A third row, the new units and front end at the old batch size, splits the gain between the model
and the batch. Each recipe trains the same utterances (the first --utterances of the training split)
for one epoch at a time, all of them alternating --rounds times in one process with 2 threads, so
drift hits them alike; the median epoch counts. Features are cached beforehand, so only training is
timed. Goal: speedup >= 1.8.
Ends with one JSON line: {"audio_s_per_s_old": ..., "audio_s_per_s_new": ..., "speedup": ...,
"speedup_at_old_batch": ...}.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import quick  # noqa: E402 (benchmarks/quick.py, beside this script)
from study.data.features import mean_std  # noqa: E402
from study.data.prepared import SplitData, prepare_data  # noqa: E402
from study.data.tokenizer import build_tokenizer  # noqa: E402
from study.training import Trainer  # noqa: E402
from study.sweep.experiment_file import load_experiment  # noqa: E402
from study.trial_context import build_model  # noqa: E402

OLD_BATCH = {"train.batch_seconds": 16.0}
OLD = {"text.units": "char", "model.subsampling": 4, "model.front_end": "conv2d",
       "model.subsampling_channels": 32, **OLD_BATCH}  # the recipe before the main one (characters, 4x front end)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default=str(ROOT / "experiments" / "dense.toml"))
    parser.add_argument("--utterances", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = quick.parse_args(parser, experiment=quick.SMOKE, utterances=12, rounds=1)
    torch.set_num_threads(2)

    experiment = load_experiment(args.experiment)  # an experiment file's base configuration
    recipes = {"old": experiment.config(extra=OLD), "new@16s": experiment.config(extra=OLD_BATCH),
               "new": experiment.config()}
    data = prepare_data(recipes["new"])["train"]  # the corpus and features are the same for both
    train = SplitData(data.utterances[:args.utterances], data.features[:args.utterances])
    trainers, audio = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, cfg in recipes.items():
            tokenizer = build_tokenizer(cfg.text, train.transcripts, cfg.data.cache_dir)
            mean, std = mean_std(train.features)
            trainers[name] = Trainer(cfg, build_model(cfg, tokenizer.vocab_size), train, tokenizer, mean, std,
                                     Path(tmp) / f"{name}.pt", torch.device("cpu"), epochs=args.rounds)
            audio[name] = sum(train.utterances[i].duration for i in trainers[name].train_indices)
        seconds = {name: [] for name in recipes}
        for epoch in range(args.rounds + 1):  # the first epoch of each warms up and is not counted
            for name, trainer in trainers.items():
                start = time.perf_counter()
                trainer.train_epoch(min(epoch, args.rounds - 1))
                if epoch:
                    seconds[name].append(time.perf_counter() - start)

    rate = {name: audio[name] / statistics.median(seconds[name]) for name in recipes}
    print(f"{'recipe':8} {'units':6} {'front end':>9} {'batch s':>7} {'steps':>5} {'audio s':>8} {'epoch s':>8} "
          f"{'audio s/s':>9} {'vs old':>6}")
    for name, cfg in recipes.items():
        print(f"{name:8} {cfg.text.units:6} {str(cfg.model.subsampling) + 'x':>9} {cfg.train.batch_seconds:7.0f} "
              f"{trainers[name].steps_per_epoch:5} {audio[name]:8.0f} {statistics.median(seconds[name]):8.1f} "
              f"{rate[name]:9.1f} {rate[name] / rate['old']:5.2f}x")
    speedup = rate["new"] / rate["old"]
    print(f"speedup {speedup:.2f}x (goal >= 1.8)")
    print(json.dumps({"audio_s_per_s_old": round(rate["old"], 2), "audio_s_per_s_new": round(rate["new"], 2),
                      "speedup": round(speedup, 3), "speedup_at_old_batch": round(rate["new@16s"] / rate["old"], 3)}))


if __name__ == "__main__":
    main()
