"""One trial: data -> features -> train (resumable) -> evaluate -> log everything to MLflow."""
from __future__ import annotations

import hashlib
import json
import random
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import mlflow
import numpy as np
import torch

from study import text
from study.config import Config, dumps_toml, to_dict
from study.data.splits import SPLITS, load_splits
from study.features import compute_features, mean_std
from study.model import ConformerCTC
from study.tracking import start_run
from study.train import SplitData, Trainer, error_rates, resolve_device, set_threads


def trial_key(cfg: Config) -> str:
    """Same resolved configuration -> same key -> same checkpoint folder (resume after a crash)."""
    return hashlib.sha256(json.dumps(to_dict(cfg), sort_keys=True).encode()).hexdigest()[:16]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare_data(cfg: Config) -> dict[str, SplitData]:
    """Lists and checks every split, then computes (or reads cached) log-mel features."""
    splits = load_splits(cfg.data)
    cache = Path(cfg.data.cache_dir) / "features"
    data = {}
    for name in SPLITS:
        utts = splits[name]
        if name == "train":
            utts = [u for u in utts if u.duration <= cfg.data.max_train_seconds]
        data[name] = SplitData(utts, compute_features(utts, cfg.features, cache))
    return data


def build_model(cfg: Config) -> ConformerCTC:
    torch.manual_seed(cfg.train.seed)
    return ConformerCTC(cfg.model, cfg.features.n_mels, text.vocab_size())


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def save_model(path: Path, cfg: Config, model: ConformerCTC, mean: torch.Tensor, std: torch.Tensor) -> None:
    """State dict plus what rebuilds it: loadable with torch.load(weights_only=True)."""
    torch.save({"model_config": asdict(cfg.model), "n_mels": cfg.features.n_mels, "vocab_size": text.vocab_size(),
                "state_dict": model.state_dict(), "feature_mean": mean, "feature_std": std}, path)


def run_trial(cfg: Config, tracking_uri: str, runs_dir: Path = Path("runs")) -> dict[str, float]:
    """Runs (or resumes) one trial and returns its final metrics; the MLflow run ends FINISHED or FAILED."""
    seed_everything(cfg.train.seed)
    set_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    data = prepare_data(cfg)  # every data error surfaces here, before a run or a model exists
    mean, std = mean_std(data["train"].features)

    trial_dir = Path(runs_dir) / "trials" / cfg.tracking.experiment / trial_key(cfg)
    trial_dir.mkdir(parents=True, exist_ok=True)
    model = build_model(cfg)
    trainer = Trainer(cfg, model, data["train"], mean, std, trial_dir / "checkpoint.pt", device)
    resumed = trainer.load_checkpoint()
    run_id_file = trial_dir / "mlflow_run_id"
    previous_run = run_id_file.read_text().strip() if resumed and run_id_file.is_file() else None

    with start_run(tracking_uri, cfg, run_id=previous_run) as run:
        run_id_file.write_text(run.info.run_id)
        try:
            metrics = _train_and_evaluate(cfg, trainer, data, mean, std, device, trial_dir)
        except BaseException as exc:
            mlflow.set_tag("failure_reason", f"{type(exc).__name__}: {exc}"[:5000])
            mlflow.end_run(status="FAILED" if not isinstance(exc, KeyboardInterrupt) else "KILLED")
            raise
    return metrics


def _train_and_evaluate(cfg: Config, trainer: Trainer, data: dict[str, SplitData], mean: torch.Tensor,
                        std: torch.Tensor, device: torch.device, trial_dir: Path) -> dict[str, float]:
    model = trainer.model
    mlflow.set_tag("resumed_from_epoch", str(trainer.history.epoch))
    if trainer.skipped:
        mlflow.set_tag("train_utterances_skipped", str(trainer.skipped))

    def evaluate_dev() -> dict[str, float]:
        wer, cer, _ = error_rates(model, data["dev"], mean, std, device, trainer.max_frames)
        return {"dev/wer": wer, "dev/cer": cer}

    def log_epoch(epoch: int, metrics: dict[str, float]) -> None:
        mlflow.log_metrics(metrics, step=epoch)
        print(f"epoch {epoch}/{cfg.train.epochs}: loss {metrics['train/loss']:.3f}  dev WER "
              f"{metrics['dev/wer']:.2%}  CER {metrics['dev/cer']:.2%}  ({metrics['train/seconds']:.0f} s)",
              flush=True)

    start = time.perf_counter()
    history = trainer.fit(evaluate_dev, log_epoch)
    dev_wer, dev_cer, _ = error_rates(model, data["dev"], mean, std, device, trainer.max_frames)
    test_wer, test_cer, test_hyps = error_rates(model, data["test"], mean, std, device, trainer.max_frames)
    final = {"dev/wer": dev_wer, "dev/cer": dev_cer, "test/wer": test_wer, "test/cer": test_cer,
             "params/total": count_params(model), "params/encoder": count_params(model.encoder),
             "time/train_s": history.train_seconds, "time/trial_s": time.perf_counter() - start}
    mlflow.log_metrics(final, step=cfg.train.epochs)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "config.toml").write_text(dumps_toml(to_dict(cfg)))
        save_model(tmp / "model.pt", cfg, model.cpu(), mean, std)
        examples = [f"REF: {u.text}\nHYP: {h}\n" for u, h in zip(data["test"].utterances[:50], test_hyps)]
        (tmp / "test_examples.txt").write_text("\n".join(examples))
        mlflow.log_artifacts(str(tmp))
    (trial_dir / "DONE").write_text(json.dumps(final))
    return final
