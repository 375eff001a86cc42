"""One trial: data -> features -> train (resumable) -> evaluate -> log everything to MLflow."""
from __future__ import annotations

import hashlib
import json
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import torch

from study import text
from study import baselines
from study.accounting import analytic_params, count_params, encoder_flops, kept_units, latency_ms
from study.adl import AdlSettings
from study.adl_training import AdlController
from study.config import Config, ModelConfig, dumps_toml, identity, to_dict
from study.data.splits import SPLITS, load_extra_tests, load_splits
from study.dense_source import dense_config, find_dense_run, load_dense_model
from study.features import compute_features, mean_std
from study.model import BlockWidths, ConformerCTC, dense_widths
from study.model.io import save_model
from study.pruning import adl_decisions, attach_adls, prune
from study.tracking import run_status, start_run
from study.train import SplitData, Trainer, batch_frames, error_rates, resolve_device, set_threads

MAGNITUDE = ("magnitude_structured", "magnitude_unstructured")


def trial_key(cfg: Config) -> str:
    """Same resolved configuration -> same key -> same checkpoint folder (resume after a crash),
    whatever the device or thread count it resumes on."""
    return hashlib.sha256(json.dumps(identity(cfg), sort_keys=True).encode()).hexdigest()[:16]


def trial_dir(cfg: Config, runs_dir: Path) -> Path:
    return Path(runs_dir) / "trials" / cfg.tracking.experiment / trial_key(cfg)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare_data(cfg: Config) -> dict[str, SplitData]:
    """Lists and checks every split, then computes (or reads cached) log-mel features."""
    splits = {**load_splits(cfg.data), **load_extra_tests(cfg.data)}
    cache = Path(cfg.data.cache_dir) / "features"
    data = {}
    for name in [*SPLITS, *cfg.data.extra_test_subsets]:
        utts = splits[name]
        if name == "train":
            utts = [u for u in utts if u.duration <= cfg.data.max_train_seconds]
        data[name] = SplitData(utts, compute_features(utts, cfg.features, cache))
    return data


def build_model(cfg: Config, model_cfg: ModelConfig | None = None,
                widths: list[BlockWidths] | None = None) -> ConformerCTC:
    torch.manual_seed(cfg.train.seed)
    return ConformerCTC(model_cfg or cfg.model, cfg.features.n_mels, text.vocab_size(), widths)


def adl_settings(cfg: Config) -> AdlSettings:
    a = cfg.adl
    return AdlSettings(tau=a.tau, threshold=a.threshold, inference=a.inference, mask_granularity=a.mask_granularity,
                       straight_through=a.straight_through, rescale=a.rescale, beta0=a.beta0)


@dataclass
class TrialResult:
    run_id: str
    metrics: dict[str, float]


@dataclass
class Outcome:
    """What a method hands to the shared evaluation: the final model and how to describe it."""
    model: ConformerCTC
    model_cfg: ModelConfig
    widths: list[BlockWidths] | None  # None: unstructured pruning (dense shapes, zeros inside)
    train_seconds: float = 0.0
    adl: AdlController | None = None
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class TrialContext:
    cfg: Config
    data: dict[str, SplitData]
    mean: torch.Tensor
    std: torch.Tensor
    device: torch.device
    trial_dir: Path

    @property
    def max_frames(self) -> int:
        return batch_frames(self.cfg)

    def error_rates(self, model: torch.nn.Module, split: str) -> tuple[float, float, list[str]]:
        return error_rates(model, self.data[split], self.mean, self.std, self.device, self.max_frames)

    def trainer(self, model: torch.nn.Module, checkpoint: str, epochs: int | None = None, **kwargs) -> Trainer:
        return Trainer(self.cfg, model, self.data["train"], self.mean, self.std, self.trial_dir / checkpoint,
                       self.device, epochs=epochs, **kwargs)

    def fit(self, trainer: Trainer, prefix: str = "", step_offset: int = 0, adl: AdlController | None = None) -> float:
        """Trains (resuming from the trainer's checkpoint) with per-epoch dev figures; returns seconds."""
        trainer.load_checkpoint()
        mlflow.set_tag(f"{prefix}resumed_from_epoch", str(trainer.history.epoch))
        model = trainer.model

        def evaluate() -> dict[str, float]:
            wer, cer, _ = self.error_rates(model, "dev")
            return {"dev/wer": wer, "dev/cer": cer}

        def log_epoch(epoch: int, metrics: dict[str, float]) -> None:
            if adl:
                metrics.update(adl.epoch_metrics(epoch / trainer.epochs))
            mlflow.log_metrics({prefix + k: v for k, v in metrics.items()}, step=step_offset + epoch)
            kept = "".join(f"  kept {k.rsplit('/', 1)[1]} {v:.0%}" for k, v in metrics.items() if "kept_fraction" in k)
            print(f"{prefix}epoch {epoch}: loss {metrics['train/loss']:.3f}  dev WER {metrics['dev/wer']:.2%}  "
                  f"CER {metrics['dev/cer']:.2%}{kept}  ({metrics['train/seconds']:.0f} s)", flush=True)

        return trainer.fit(evaluate, log_epoch).train_seconds

    def finetune(self, model: torch.nn.Module, epochs: int) -> float:
        """An ablation for every pruning method: a few epochs after pruning, logged as finetune/*."""
        if not epochs:
            return 0.0
        seconds = self.fit(self.trainer(model, "finetune.pt", epochs=epochs), "finetune/", self.cfg.train.epochs)
        model.eval()
        return seconds


def run_trial(cfg: Config, tracking_uri: str, runs_dir: Path = Path("runs"),
              tags: dict[str, str] | None = None) -> TrialResult:
    """Runs (or resumes) one trial; the MLflow run ends FINISHED or FAILED (KILLED on Ctrl-C or SIGTERM).

    A trial whose folder says DONE, with its run FINISHED in this store, is not run again."""
    folder = trial_dir(cfg, runs_dir)
    finished = _finished(folder, tracking_uri)
    if finished:
        return finished
    seed_everything(cfg.train.seed)
    set_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    data = prepare_data(cfg)  # every data error surfaces here, before a run or a model exists
    mean, std = mean_std(data["train"].features)
    folder.mkdir(parents=True, exist_ok=True)
    ctx = TrialContext(cfg, data, mean, std, device, folder)
    tags = dict(tags or {})
    source = None
    if cfg.method in MAGNITUDE:
        source = _dense_source(cfg, tracking_uri, runs_dir, tags)
        tags["source_dense_run_id"] = source[0]

    run_id_file = folder / "mlflow_run_id"
    with start_run(tracking_uri, cfg, run_id=_unfinished_run(run_id_file, tracking_uri), tags=tags) as run:
        run_id_file.write_text(run.info.run_id)
        try:
            metrics = _evaluate_and_log(ctx, _produce(ctx, source))
        except BaseException as exc:
            mlflow.set_tag("failure_reason", f"{type(exc).__name__}: {exc}"[:5000])
            mlflow.end_run(status="FAILED" if not isinstance(exc, KeyboardInterrupt) else "KILLED")
            raise
    (folder / "DONE").write_text(json.dumps({"run_id": run.info.run_id, "metrics": metrics}))
    return TrialResult(run.info.run_id, metrics)


def _finished(trial_dir: Path, tracking_uri: str) -> TrialResult | None:
    done = trial_dir / "DONE"
    if not done.is_file():
        return None
    record = json.loads(done.read_text())
    if run_status(record["run_id"], tracking_uri) != "FINISHED":
        return None
    print(f"trial {trial_dir.name} already finished (MLflow run {record['run_id']})")
    return TrialResult(record["run_id"], record["metrics"])


def _unfinished_run(run_id_file: Path, tracking_uri: str) -> str | None:
    """The run of an interrupted attempt at this trial, to resume rather than duplicate."""
    if not run_id_file.is_file():
        return None
    run_id = run_id_file.read_text().strip()
    return run_id if run_status(run_id, tracking_uri) not in (None, "FINISHED") else None


def _dense_source(cfg: Config, tracking_uri: str, runs_dir: Path, tags: dict[str, str]) -> tuple[str, ConformerCTC]:
    """The finished dense run of this recipe; trained now (as its own run) when there is none."""
    run_id = find_dense_run(cfg, tracking_uri)
    if run_id is None:
        print("no finished dense run of this recipe: training it first")
        parent = {k: v for k, v in tags.items() if k == "mlflow.parentRunId"}
        run_id = run_trial(dense_config(cfg), tracking_uri, runs_dir, tags=parent).run_id
    else:
        print(f"reusing dense run {run_id}")
    return run_id, load_dense_model(run_id, tracking_uri)


def _produce(ctx: TrialContext, source: tuple[str, ConformerCTC] | None) -> Outcome:
    """Trains and/or prunes according to the method; returns the final model."""
    cfg = ctx.cfg
    if cfg.method in ("dense", "adaptive_dropout"):
        model = build_model(cfg)
        adl = None
        if cfg.method == "adaptive_dropout":
            adl = AdlController(attach_adls(model, cfg.adl.locations, adl_settings(cfg)), cfg.adl)
        trainer = ctx.trainer(model, "checkpoint.pt",
                              param_groups=adl.param_groups(model, cfg.train.lr, cfg.train.weight_decay) if adl else None,
                              regulariser=adl.loss if adl else None)
        seconds = ctx.fit(trainer, adl=adl)
        if trainer.skipped:
            mlflow.set_tag("train_utterances_skipped", str(trainer.skipped))
        if not adl:
            return Outcome(model.eval(), cfg.model, dense_widths(cfg.model), seconds)
        pruned, widths = prune(model.eval(), cfg.model, adl_decisions(model))
        seconds += ctx.finetune(pruned, cfg.adl.finetune_epochs)  # the paper prunes with no fine-tuning
        return Outcome(pruned, cfg.model, widths, seconds, adl=adl)

    dense_total = analytic_params(cfg.model, dense_widths(cfg.model), cfg.features.n_mels, text.vocab_size())["total"]
    target = baselines.resolve_target(cfg.prune.target_params, cfg.prune.target_reduction, dense_total)
    mlflow.set_tag("budget.target_params", str(target))
    if cfg.method == "small_dense":
        model_cfg, widths = baselines.small_dense_shape(cfg.model, target, cfg.prune.shrink, cfg.features.n_mels,
                                                        text.vocab_size())
        model = build_model(cfg, model_cfg, widths)
        seconds = ctx.fit(ctx.trainer(model, "checkpoint.pt"))
        shape = f"d{model_cfg.d_model}-ffn{widths[0].ffn1}-q{widths[0].query_dims[0]}-conv{widths[0].conv}"
        return Outcome(model.eval(), model_cfg, widths, seconds, tags={"small_dense.shape": shape})

    _, dense = source
    dense = dense.to(ctx.device).eval()
    if cfg.method == "magnitude_structured":
        plan = baselines.structured_plan(dense, cfg.model, target, cfg.prune.ranking)
        pruned, widths = prune(dense, cfg.model, plan)
        return Outcome(pruned, cfg.model, widths, ctx.finetune(pruned, cfg.prune.finetune_epochs))
    baselines.apply_global_magnitude(dense, target)
    seconds = ctx.finetune(dense, cfg.prune.finetune_epochs)
    baselines.make_permanent(dense)
    return Outcome(dense.eval(), cfg.model, None, seconds)


def _evaluate_and_log(ctx: TrialContext, outcome: Outcome) -> dict[str, float]:
    """The final figures of METHOD.md section 4 and the artifacts, the same for every method."""
    cfg, model = ctx.cfg, outcome.model
    if outcome.tags:
        mlflow.set_tags(outcome.tags)
    dev_wer, dev_cer, _ = ctx.error_rates(model, "dev")
    test_wer, test_cer, test_hyps = ctx.error_rates(model, "test")
    dense = build_model(cfg).to(ctx.device).eval()  # the full-size reference of every method
    final = {"dev/wer": dev_wer, "dev/cer": dev_cer, "test/wer": test_wer, "test/cer": test_cer,
             "time/train_s": outcome.train_seconds, **size_metrics(outcome, dense)}
    for subset in cfg.data.extra_test_subsets:
        final[f"{subset}/wer"], final[f"{subset}/cer"], _ = ctx.error_rates(model, subset)
    mlflow.log_metrics(final, step=cfg.train.epochs)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "config.toml").write_text(dumps_toml(to_dict(cfg)))
        widths = outcome.widths or dense_widths(cfg.model)
        save_model(tmp / "model.pt", outcome.model_cfg, model.cpu(), widths,
                   {"feature_mean": ctx.mean, "feature_std": ctx.std})
        examples = [f"REF: {u.text}\nHYP: {h}\n" for u, h in zip(ctx.data["test"].utterances[:50], test_hyps)]
        (tmp / "test_examples.txt").write_text("\n".join(examples))
        if outcome.adl:
            outcome.adl.save_histogram(tmp / "retention_histogram.png")
            probs = {loc: [round(float(p), 5) for p in v] for loc, v in outcome.adl.by_location().items()}
            (tmp / "retention.json").write_text(json.dumps(probs))
        mlflow.log_artifacts(str(tmp))
    return final


def size_metrics(outcome: Outcome, dense: ConformerCTC) -> dict[str, float]:
    """Parameters (checked against the analytic count), FLOPs and latency of the final model vs dense.

    Unstructured pruning counts nonzero parameters; its FLOPs and latency are those of its dense
    shapes, so it never shows a speed-up it does not have."""
    model = outcome.model
    dense_total = count_params(dense)
    if outcome.widths is None:
        total, encoder = baselines.nonzero_params(model), baselines.nonzero_params(model.encoder)
        widths = dense_widths(outcome.model_cfg)
        analytic = None
    else:
        total, encoder, widths = count_params(model), count_params(model.encoder), outcome.widths
        analytic = analytic_params(outcome.model_cfg, widths, model.n_mels, model.head.out_features)
        if analytic["total"] != total:
            raise AssertionError(f"parameter count {total} differs from the analytic count {analytic['total']}")
    latency = latency_ms({"model": model, "dense": dense})
    metrics = {"params/total": total, "params/encoder": encoder, "params/dense_total": dense_total,
               "params/reduction": 1.0 - total / dense_total, "flops/encoder_10s": encoder_flops(model),
               "flops/dense_encoder_10s": encoder_flops(dense), "latency/ms_b1_10s": latency["model"],
               "latency/dense_ms_b1_10s": latency["dense"]}
    for loc in ("ffn", "mhsa", "conv"):
        if analytic:
            metrics[f"params/kept/{loc}"] = analytic[loc]  # parameters the location still owns
        metrics[f"units/kept/{loc}"] = kept_units(widths)[loc]
    return metrics
