"""Audio to text with a trained or pruned model: `python -m study.transcribe MODEL AUDIO... | --manifest M`.

MODEL is a model.pt this harness exported (a path, runs:/<run_id>/model.pt or a run id of the tracking
store). It carries its output units and feature statistics; the features are computed as in training
(in parallel processes, resampled to 16 kHz), then decoded greedily in batches sorted by length, exactly
as the evaluation decodes. Prints `id<TAB>text` per utterance in input order (or writes it to --out);
with a manifest whose transcripts are not empty, also the WER and CER against them.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import fields
from pathlib import Path

import torch

from study.config import FeatureConfig
from study.data.audio import audio_duration
from study.data.features import compute_features
from study.data.manifest import DataError, Utterance
from study.data.manifest_formats import FORMATS, read_entries
from study.data.manifest_source import to_utterance
from study.data.prepared import SplitData
from study.data.tokenizer import tokenizer_from_state
from study.evaluation.decoding import transcribe
from study.evaluation.error_rates import char_error_rate, word_error_rate
from study.model.io import load_model
from study.tracking.dense_source import model_file
from study.training import resolve_device


def feature_config(saved: dict) -> FeatureConfig:
    """The features the model was trained on: saved with it, or (older files) the defaults at its mel bins."""
    known = {f.name for f in fields(FeatureConfig)}
    settings = {k: v for k, v in (saved.get("features") or {}).items() if k in known}
    return FeatureConfig(**{"n_mels": saved["n_mels"], **settings})


def audio_utterances(paths: list[str]) -> list[Utterance]:
    """Whole files, named by their path; a missing or unreadable one raises DataError naming it."""
    return [Utterance(Path(p).with_suffix("").as_posix(), str(Path(p).absolute()), audio_duration(p), "", "")
            for p in paths]


def manifest_utterances(path: str, fmt: str) -> tuple[list[Utterance], list[str]]:
    """The manifest's utterances (checked like a training split's, but a transcript may be empty) and
    its transcripts as written."""
    utterances, references = [], []
    for entry in read_entries(path, fmt):
        checked = to_utterance(entry, need_text=False)
        utterances.append(checked)
        references.append(checked.text)
    return utterances, references


@torch.inference_mode()
def transcribe_utterances(model_path: str, utterances: list[Utterance], device: str = "cpu",
                          batch_seconds: float = 200.0, tracking_uri: str = "") -> list[str]:
    """The model's greedy transcripts of the utterances, in their order."""
    _, local = model_file(model_path, tracking_uri)
    model, saved = load_model(local)
    target = resolve_device(device)
    model.to(target)
    features_cfg = feature_config(saved)
    max_frames = round(batch_seconds * 1000 / features_cfg.hop_ms)
    with tempfile.TemporaryDirectory(prefix="transcribe-") as cache:
        data = SplitData(utterances, compute_features(utterances, features_cfg, Path(cache)))
        return transcribe(model, data, tokenizer_from_state(saved.get("tokenizer")), saved["feature_mean"],
                          saved["feature_std"], target, max_frames)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="model.pt path, runs:/<run_id>/model.pt or a run id")
    parser.add_argument("audio", nargs="*", help="audio files (any rate soundfile reads)")
    parser.add_argument("--manifest", help="a NeMo JSON-lines manifest, Kaldi data directory or TSV manifest")
    parser.add_argument("--format", choices=("auto", *FORMATS), default="auto", help="the manifest's format")
    parser.add_argument("--out", type=Path, help="write id<TAB>text lines here instead of to stdout")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or auto (default: %(default)s)")
    parser.add_argument("--batch-seconds", type=float, default=200.0, help="audio per batch (default: %(default)s)")
    parser.add_argument("--tracking-uri", default="", help="the MLflow store a run id or runs:/ refers to")
    args = parser.parse_args(argv)
    if not args.audio and not args.manifest:
        parser.error("give audio files or --manifest")
    try:
        utterances, references = audio_utterances(args.audio), [""] * len(args.audio)
        if args.manifest:
            listed, texts = manifest_utterances(args.manifest, args.format)
            utterances, references = utterances + listed, references + texts
        hyps = transcribe_utterances(args.model, utterances, args.device, args.batch_seconds, args.tracking_uri)
    except (DataError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    lines = "".join(f"{u.id}\t{h}\n" for u, h in zip(utterances, hyps))
    if args.out:
        args.out.write_text(lines)
    else:
        sys.stdout.write(lines)
    scored = [(r, h) for r, h in zip(references, hyps) if r]
    if scored:
        refs, scored_hyps = zip(*scored)
        print(f"{len(scored)} utterances with transcripts: WER {word_error_rate(list(refs), list(scored_hyps)):.2%}, "
              f"CER {char_error_rate(list(refs), list(scored_hyps)):.2%}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
