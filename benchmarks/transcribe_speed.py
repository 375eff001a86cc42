"""What `python -m study.transcribe` costs beside the evaluation's own decoding of the same audio.

One process: the evaluation's decoding (`study.evaluation.decoding.transcribe` over features already in
the cache, as a trial decodes its dev and test splits) and the command's work from audio files
(`study.transcribe.transcribe_utterances`: load the model file, compute the features into a fresh cache,
decode), taking turns, --rounds each; medians. Audio: the first --utterances files of the experiment's
corpus (train, dev, then test), or of --audio-dir (e.g. the Free Spoken Digit Dataset's recordings).
Model: the experiment's shape with random weights (decoding time does not depend on the weights), or
--model. Ends with one JSON line: {"transcribe_over_evaluation", "evaluation_s", "transcribe_s", ...}.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import quick  # noqa: E402 (benchmarks/quick.py, beside this script)
from study.data.features import compute_features, mean_std  # noqa: E402
from study.data.prepared import SplitData  # noqa: E402
from study.data.splits import load_splits  # noqa: E402
from study.data.tokenizer import CharTokenizer  # noqa: E402
from study.evaluation.decoding import transcribe  # noqa: E402
from study.model import dense_widths  # noqa: E402
from study.model.io import load_model, save_model  # noqa: E402
from study.sweep.experiment_file import load_experiment  # noqa: E402
from study.trial_context import build_model  # noqa: E402
from study.transcribe import audio_utterances, feature_config, transcribe_utterances  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default=str(ROOT / "experiments" / "default.toml"))
    parser.add_argument("--audio-dir", type=Path, help="decode these *.wav / *.flac files instead of the corpus's")
    parser.add_argument("--model", type=Path, help="a model.pt (default: the experiment's shape, random weights)")
    parser.add_argument("--utterances", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-seconds", type=float, default=200.0)
    args = quick.parse_args(parser, experiment=quick.SMOKE, utterances=16, rounds=1)
    cfg = load_experiment(args.experiment).config()
    if args.audio_dir:
        paths = sorted(str(p) for p in args.audio_dir.iterdir() if p.suffix in (".wav", ".flac"))
    else:
        splits = load_splits(cfg.data)
        paths = [u.path for name in ("train", "dev", "test") for u in splits[name]]
    utterances = audio_utterances(paths[:args.utterances])
    with tempfile.TemporaryDirectory() as tmp:
        model_path = args.model or Path(tmp) / "model.pt"
        if not args.model:
            model = build_model(cfg, CharTokenizer().vocab_size)
            features = compute_features(utterances, cfg.features, Path(tmp) / "stats")
            mean, std = mean_std(features)
            save_model(model_path, cfg.model, model, dense_widths(cfg.model), {"feature_mean": mean, "feature_std": std,
                       "tokenizer": CharTokenizer().state(), "features": asdict(cfg.features)})
        model, saved = load_model(model_path)
        cached = compute_features(utterances, feature_config(saved), Path(tmp) / "cache")  # the trial's cache, built
        data = SplitData(utterances, cached)
        max_frames = round(args.batch_seconds * 1000 / feature_config(saved).hop_ms)
        times: dict[str, list[float]] = {"evaluation": [], "transcribe": []}
        for _ in range(args.rounds):
            start = time.perf_counter()
            evaluated = transcribe(model, data, CharTokenizer(), saved["feature_mean"], saved["feature_std"],
                                   torch.device("cpu"), max_frames)
            times["evaluation"].append(time.perf_counter() - start)
            start = time.perf_counter()
            transcribed = transcribe_utterances(str(model_path), utterances, batch_seconds=args.batch_seconds)
            times["transcribe"].append(time.perf_counter() - start)
            assert transcribed == evaluated, "the command's text differs from the evaluation's"
    median = {name: statistics.median(values) for name, values in times.items()}
    audio_hours = sum(u.duration for u in utterances) / 3600
    ratio = median["transcribe"] / median["evaluation"]
    print(f"{len(utterances)} utterances ({audio_hours * 60:.1f} min of audio), {torch.get_num_threads()} threads, "
          f"median of {args.rounds}")
    print(f"{'decoding':<44}{'seconds':>10}{'ratio':>8}")
    print(f"{'evaluation (cached features)':<44}{median['evaluation']:>10.2f}{1.0:>8.2f}")
    print(f"{'study.transcribe (model file + features)':<44}{median['transcribe']:>10.2f}{ratio:>8.2f}")
    print(json.dumps({"transcribe_over_evaluation": round(ratio, 3), "evaluation_s": round(median["evaluation"], 3),
                      "transcribe_s": round(median["transcribe"], 3), "utterances": len(utterances),
                      "audio_minutes": round(audio_hours * 60, 2)}))


if __name__ == "__main__":
    main()
