"""Does pruning compose with int8? `python -m study.quantize EXPERIMENT` takes every finished trial run of an
experiment, exports its model to ONNX (study/export.py: float, checked against PyTorch), quantises the
export's weights to int8 with ONNX Runtime's dynamic quantisation (activations quantised on the fly), and
logs to the run, for both files: the test WER (greedy decoding of the run's own test split) and the
steady-state batch-1 latency on 10 s of audio, in ONNX Runtime with the given threads:
    onnx/test_wer, onnx/latency_ms_b1_10s, int8/test_wer, int8/latency_ms_b1_10s
Runs that already have them are skipped, so a second call continues; `python -m analysis EXPERIMENT`
then draws them (figure int8). Needs the `deploy` extra (onnxruntime, onnx, onnxscript).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import mlflow
import torch

from study.config import Config, build, read_toml
from study.data.batching import make_batches, pad_batch
from study.data.prepared import SplitData, prepare_data
from study.data.tokenizer import tokenizer_from_state
from study.evaluation.accounting import encoder_inputs, steady_times
from study.evaluation.decoding import greedy_decode
from study.evaluation.error_rates import word_error_rate
from study.export import export, run_exported
from study.model.conformer import output_lengths
from study.model.io import load_model
from study.names import TAG_ROLE
from study.tracking.store import resolve_tracking_uri

METRICS = ("onnx/test_wer", "onnx/latency_ms_b1_10s", "int8/test_wer", "int8/latency_ms_b1_10s")
BATCH_FRAMES = 20_000  # padded frames per decoding batch


def quantize_int8(onnx_path: Path, out: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    quantize_dynamic(str(onnx_path), str(out), weight_type=QuantType.QInt8)
    return out


def onnx_transcripts(run, data: SplitData, tokenizer, factor: int) -> list[str]:
    """Greedy transcripts of a split by an exported model (`run`: feats, lengths -> log-probabilities)."""
    hyps: dict[int, str] = {}
    for indices in make_batches(data.lengths, BATCH_FRAMES, shuffle_seed=None):
        batch = pad_batch(indices, data.features)
        log_probs = run(batch.features.float(), batch.feature_lengths)  # (B, T', V)
        hyps.update(zip(indices, greedy_decode(log_probs, output_lengths(batch.feature_lengths, factor), tokenizer)))
    return [hyps[i] for i in range(len(data.utterances))]


def measure(model_path: Path, cfg: Config, threads: int, rounds: int) -> dict[str, float]:
    """The four figures of one model file, float and int8."""
    model, saved = load_model(model_path)
    tokenizer = tokenizer_from_state(saved.get("tokenizer"))
    test = prepare_data(cfg)["test"]
    factor = model.encoder.subsampling.factor
    figures = {}
    with tempfile.TemporaryDirectory(prefix="quantize-") as tmp:
        files = {"onnx": export(model_path, Path(tmp) / "model.onnx")}
        files["int8"] = quantize_int8(files["onnx"], Path(tmp) / "model.int8.onnx")
        runners = {name: run_exported(path, "onnx", threads) for name, path in files.items()}
        for name, run in runners.items():
            figures[f"{name}/test_wer"] = word_error_rate(test.transcripts, onnx_transcripts(run, test, tokenizer, factor))
        feats, lengths = encoder_inputs(model.n_mels)  # batch 1, 10 s
        times = steady_times({name: (lambda run=run: run(feats, lengths)) for name, run in runners.items()}, rounds)
        for name, samples in times.items():
            figures[f"{name}/latency_ms_b1_10s"] = statistics.median(ms for ms, _ in samples)
    return figures


def quantize_experiment(experiment: str, tracking_uri: str, threads: int = 2, rounds: int = 4) -> list[str]:
    """Measures every finished trial run of `experiment` that lacks the figures; returns the run ids done."""
    client = mlflow.MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise SystemExit(f"error: no experiment {experiment!r} in {tracking_uri}")
    runs = client.search_runs([found.experiment_id], f"attributes.status = 'FINISHED' and tags.`{TAG_ROLE}` = 'trial'",
                              max_results=10_000)
    done = []
    for run in runs:
        if all(m in run.data.metrics for m in METRICS):
            continue
        with tempfile.TemporaryDirectory(prefix="quantize-run-") as tmp:
            model_path = Path(client.download_artifacts(run.info.run_id, "model.pt", tmp))
            cfg = build(Config, read_toml(Path(client.download_artifacts(run.info.run_id, "config.toml", tmp))))
            figures = measure(model_path, cfg, threads, rounds)
        for key, value in figures.items():
            client.log_metric(run.info.run_id, key, value)
        print(f"{run.data.tags.get('mlflow.runName', run.info.run_id)}: " + ", ".join(
            f"{k} {v:.4g}" for k, v in figures.items()), flush=True)
        done.append(run.info.run_id)
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", help="the MLflow experiment (an experiment file's stem)")
    parser.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/runs/mlflow.db")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads for the latency (default: 2)")
    parser.add_argument("--rounds", type=int, default=4, help="latency rounds, interleaved (default: 4)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    done = quantize_experiment(args.experiment, resolve_tracking_uri(args.tracking_uri), args.threads, args.rounds)
    print(f"{len(done)} run(s) measured")
    return 0


if __name__ == "__main__":
    sys.exit(main())
