"""One trial: data -> features -> train (resumable) -> evaluate -> log everything to MLflow."""
from __future__ import annotations

import hashlib
import json
import random
import tempfile
from pathlib import Path
from typing import Callable

import mlflow
import numpy as np
import torch

from study import text
from study.accounting import analytic_params, count_params, encoder_flops, kept_units, latency_ms
from study.adl import AdlSettings
from study.adl_training import AdlController
from study.config import Config, dumps_toml, to_dict
from study.data.splits import SPLITS, load_splits
from study.features import compute_features, mean_std
from study.model import BlockWidths, ConformerCTC
from study.model.io import save_model
from study.pruning import adl_decisions, attach_adls, prune
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


def adl_settings(cfg: Config) -> AdlSettings:
    a = cfg.adl
    return AdlSettings(tau=a.tau, threshold=a.threshold, inference=a.inference, mask_granularity=a.mask_granularity,
                       straight_through=a.straight_through, rescale=a.rescale, beta0=a.beta0)


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
    adl = None
    if cfg.method == "adaptive_dropout":
        adl = AdlController(attach_adls(model, cfg.adl.locations, adl_settings(cfg)), cfg.adl)
    trainer = Trainer(cfg, model, data["train"], mean, std, trial_dir / "checkpoint.pt", device,
                      param_groups=adl.param_groups(model, cfg.train.lr, cfg.train.weight_decay) if adl else None,
                      regulariser=adl.loss if adl else None)
    resumed = trainer.load_checkpoint()
    run_id_file = trial_dir / "mlflow_run_id"
    previous_run = run_id_file.read_text().strip() if resumed and run_id_file.is_file() else None

    with start_run(tracking_uri, cfg, run_id=previous_run) as run:
        run_id_file.write_text(run.info.run_id)
        try:
            metrics = _train_and_evaluate(cfg, trainer, adl, data, mean, std, device, trial_dir)
        except BaseException as exc:
            mlflow.set_tag("failure_reason", f"{type(exc).__name__}: {exc}"[:5000])
            mlflow.end_run(status="FAILED" if not isinstance(exc, KeyboardInterrupt) else "KILLED")
            raise
    return metrics


def _train_and_evaluate(cfg: Config, trainer: Trainer, adl: AdlController | None, data: dict[str, SplitData],
                        mean: torch.Tensor, std: torch.Tensor, device: torch.device, trial_dir: Path) -> dict[str, float]:
    model = trainer.model
    mlflow.set_tag("resumed_from_epoch", str(trainer.history.epoch))
    if trainer.skipped:
        mlflow.set_tag("train_utterances_skipped", str(trainer.skipped))

    def evaluate_dev(of: torch.nn.Module) -> Callable[[], dict[str, float]]:
        def evaluate() -> dict[str, float]:
            wer, cer, _ = error_rates(of, data["dev"], mean, std, device, trainer.max_frames)
            return {"dev/wer": wer, "dev/cer": cer}
        return evaluate

    def log_epoch(epoch: int, metrics: dict[str, float], prefix: str = "", step_offset: int = 0) -> None:
        if adl and not prefix:
            metrics.update(adl.epoch_metrics(epoch / cfg.train.epochs))
        mlflow.log_metrics({prefix + k: v for k, v in metrics.items()}, step=step_offset + epoch)
        kept = "".join(f"  kept {k.rsplit('/', 1)[1]} {v:.0%}" for k, v in metrics.items() if "kept_fraction" in k)
        print(f"{prefix}epoch {epoch}: loss {metrics['train/loss']:.3f}  dev WER {metrics['dev/wer']:.2%}  "
              f"CER {metrics['dev/cer']:.2%}{kept}  ({metrics['train/seconds']:.0f} s)", flush=True)

    history = trainer.fit(evaluate_dev(model), log_epoch)
    dense = build_model(cfg).to(device).eval()  # same widths, for the dense reference figures
    if adl:
        final_model, widths = prune(model.eval(), cfg.model, adl_decisions(model))
    else:
        final_model, widths = model.eval(), [BlockWidths.dense(cfg.model)] * cfg.model.num_blocks
    if adl and cfg.adl.finetune_epochs:  # an ablation: the paper prunes with no fine-tuning
        tuner = Trainer(cfg, final_model, data["train"], mean, std, trial_dir / "finetune.pt", device,
                        epochs=cfg.adl.finetune_epochs)
        tuner.load_checkpoint()
        tuner.fit(evaluate_dev(final_model),
                  lambda e, m: log_epoch(e, m, prefix="finetune/", step_offset=cfg.train.epochs))
        final_model.eval()
    dev_wer, dev_cer, _ = error_rates(final_model, data["dev"], mean, std, device, trainer.max_frames)
    test_wer, test_cer, test_hyps = error_rates(final_model, data["test"], mean, std, device, trainer.max_frames)
    final = {"dev/wer": dev_wer, "dev/cer": dev_cer, "test/wer": test_wer, "test/cer": test_cer,
             "time/train_s": history.train_seconds, **size_metrics(cfg, final_model, dense, widths)}
    mlflow.log_metrics(final, step=cfg.train.epochs)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "config.toml").write_text(dumps_toml(to_dict(cfg)))
        save_model(tmp / "model.pt", cfg.model, final_model.cpu(), widths, {"feature_mean": mean, "feature_std": std})
        examples = [f"REF: {u.text}\nHYP: {h}\n" for u, h in zip(data["test"].utterances[:50], test_hyps)]
        (tmp / "test_examples.txt").write_text("\n".join(examples))
        if adl:
            adl.save_histogram(tmp / "retention_histogram.png")
        mlflow.log_artifacts(str(tmp))
    (trial_dir / "DONE").write_text(json.dumps(final))
    return final


def size_metrics(cfg: Config, model: ConformerCTC, dense: ConformerCTC, widths: list[BlockWidths]) -> dict[str, float]:
    """Parameters (checked against the analytic count), FLOPs and latency of the final model vs dense."""
    total, dense_total = count_params(model), count_params(dense)
    analytic = analytic_params(cfg.model, widths, model.n_mels, model.head.out_features)
    if analytic["total"] != total:
        raise AssertionError(f"parameter count {total} differs from the analytic count {analytic['total']}")
    dense_flops, flops = encoder_flops(dense), encoder_flops(model)
    latency = latency_ms({"model": model, "dense": dense})
    metrics = {"params/total": total, "params/encoder": count_params(model.encoder), "params/dense_total": dense_total,
               "params/reduction": 1.0 - total / dense_total, "flops/encoder_10s": flops,
               "flops/dense_encoder_10s": dense_flops, "latency/ms_b1_10s": latency["model"],
               "latency/dense_ms_b1_10s": latency["dense"]}
    for loc in ("ffn", "mhsa", "conv"):
        metrics[f"params/kept/{loc}"] = analytic[loc]  # parameters the location still owns
        metrics[f"units/kept/{loc}"] = kept_units(widths)[loc]
    return metrics
