"""One trial, in the order the data flows: data -> model -> train -> prune -> evaluate -> log to MLflow.

`run_trial` resumes an interrupted trial from its checkpoints and MLflow run; each method's part
(`_train` for dense, small dense, retrain_pruned and adaptive dropout, `_prune_dense_run` for magnitude pruning) returns an
Outcome that the shared evaluation measures; under DDP (train.processes > 1) ranks other than 0 only train.
"""
from __future__ import annotations

import copy
import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import mlflow
import torch

from study.runtime import distributed, progress
from study.config import Config, ModelConfig, dumps_toml, to_dict
from study.data.features import mean_std
from study.data.prepared import prepare_data
from study.data.tokenizer import build_tokenizer
from study.runtime.distributed import rank_and_world
from study.evaluation.accounting import device_name, size_metrics
from study.evaluation.error_rates import utterance_word_errors
from study.method import baselines, importance
from study.method.adaptive_dropout import AdlSettings
from study.method.adl_controller import AdlController
from study.method.attach import adl_decisions, attach_adls
from study.method.batch_norm import recalibrate_batch_norm
from study.method.budget import BudgetController
from study.method.distillation import distiller_for
from study.method.pruning import prune
from study.model import BlockWidths, ConformerCTC, dense_widths
from study.model.io import save_model
from study.model.size import analytic_params
from study.names import (
    PRUNES_DENSE,
    RETRAIN_PRUNED,
    STRUCTURED,
    TAG_BUDGET,
    TAG_FAILURE_REASON,
    TAG_SOURCE_DENSE_RUN,
    TAG_TRIAL_KEY,
    UTTERANCE_ERRORS,
)
from study.tracking.dense_source import (
    check_same_shapes,
    dense_config,
    find_dense_run,
    load_architecture,
    load_dense_model,
    load_model_from,
)
from study.tracking.mlflow_runs import close_orphaned_runs, start_run
from study.tracking.trial_record import (
    TrialResult,
    finished_result,
    record_done,
    record_run,
    trial_dir,
    trial_lock,
    unfinished_run,
)
from study.training import Trainer, resolve_device, set_threads, use_device
from study.trial_context import TrialContext, build_model, seed_everything

RECALIBRATION_UTTERANCES = 2000  # training utterances whose forward passes re-estimate BatchNorm statistics


@dataclass
class Outcome:
    """What a method hands to the shared evaluation: the final model and how to describe it."""
    model: ConformerCTC
    model_cfg: ModelConfig
    widths: list[BlockWidths] | None  # None: unstructured pruning (dense shapes, zeros inside)
    train_seconds: float = 0.0
    adl: AdlController | None = None


def run_trial(cfg: Config, tracking_uri: str, runs_dir: Path = Path("runs"),
              tags: dict[str, str] | None = None, on_run: Callable[[str], None] | None = None) -> TrialResult:
    """Runs (or resumes) one trial; the MLflow run ends FINISHED or FAILED (KILLED on Ctrl-C or SIGTERM).

    A trial whose folder says DONE, with its run FINISHED in this store, is not run again; one that
    another process is running is waited for. `on_run(run_id)` is told the run as soon as it exists."""
    folder = trial_dir(cfg, runs_dir)
    if rank_and_world()[1] > 1:  # a rank under torchrun: the process that launched it holds the lock
        return _run_trial(cfg, folder, tracking_uri, runs_dir, tags, on_run)
    with trial_lock(folder):
        return _run_trial(cfg, folder, tracking_uri, runs_dir, tags, on_run)


def _run_trial(cfg: Config, folder: Path, tracking_uri: str, runs_dir: Path,
               tags: dict[str, str] | None, on_run: Callable[[str], None] | None = None) -> TrialResult:
    finished = finished_result(folder, tracking_uri)
    if finished:
        return finished
    rank, world = rank_and_world()
    if cfg.train.processes > 1 and world == 1 and cfg.method not in PRUNES_DENSE:  # trials that prune a dense run do not train
        return _run_distributed(cfg, folder, tracking_uri, runs_dir, tags)
    seed_everything(cfg.train.seed)
    set_threads(max(1, cfg.train.threads // world) if cfg.train.threads else 0)
    device = resolve_device(distributed.local_device(cfg.train.device))
    use_device(device)
    distributed.init(device)
    if rank:  # rank 0 builds the data caches; the others read them
        torch.distributed.barrier()
    data = prepare_data(cfg)  # every data error surfaces here, before a run or a model exists
    if world > 1 and not rank:
        torch.distributed.barrier()
    tokenizer = build_tokenizer(cfg.text, data["train"].transcripts, cfg.data.cache_dir)
    mean, std = mean_std(data["train"].features)
    progress.beat()  # the data is read: a long corpus's first pass is not a hang
    folder.mkdir(parents=True, exist_ok=True)
    ctx = TrialContext(cfg, data, tokenizer, mean, std, device, folder)
    source = None  # retrain_pruned: (its source run id or path, the widths), read by every rank
    if cfg.method == RETRAIN_PRUNED:
        source = load_architecture(cfg.prune.source_run, tracking_uri, cfg.model, cfg.features.n_mels, tokenizer.vocab_size)
    if rank:
        _help_train(ctx, source[1] if source else None)
        return None
    tags = {**(tags or {}), "device": device_name(device)}  # where it trained and where latency was timed
    dense_run = None
    if cfg.method in PRUNES_DENSE or starts_from_dense(cfg):
        dense_run = _dense_source(cfg, tracking_uri, runs_dir, tags, tokenizer.state())
        tags[TAG_SOURCE_DENSE_RUN] = dense_run[0]
        given = given_dense_model(cfg)[1]
        # a model of other widths is refused before the run starts (a pruning trial's own recipe run fits)
        if given or starts_from_dense(cfg):
            check_same_shapes(dense_run[1], build_model(cfg, tokenizer.vocab_size), given or dense_run[0])
    if source:
        tags["source_pruned_run_id"] = source[0]

    resume = unfinished_run(folder, tracking_uri)
    close_orphaned_runs(tracking_uri, cfg.tracking.experiment, folder.name, keep=resume)
    tags[TAG_TRIAL_KEY] = folder.name
    with start_run(tracking_uri, cfg, run_id=resume, tags=tags) as run:
        record_run(folder, run.info.run_id)
        if on_run:
            on_run(run.info.run_id)
        try:
            if cfg.method not in PRUNES_DENSE:
                outcome = _train(ctx, dense_run[1] if dense_run else None, source[1] if source else None)
            else:
                outcome = _prune_dense_run(ctx, dense_run[1])
            metrics = _evaluate_and_log(ctx, outcome)
            result = TrialResult(run.info.run_id, metrics)
            record_done(folder, result)  # before the run ends: a kill in between leaves it to be closed, not rerun
        except BaseException as exc:
            mlflow.set_tag(TAG_FAILURE_REASON, f"{type(exc).__name__}: {exc}"[:5000])
            mlflow.end_run(status="FAILED" if not isinstance(exc, KeyboardInterrupt) else "KILLED")
            raise
    return result


def _run_distributed(cfg: Config, folder: Path, tracking_uri: str, runs_dir: Path,
                     tags: dict[str, str] | None) -> TrialResult:
    """Relaunches this trial under torchrun with train.processes ranks; returns rank 0's result."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "distributed_config.toml"
    path.write_text(dumps_toml(to_dict(cfg)))
    distributed.launch(path, cfg.train.processes, tracking_uri, runs_dir, json.dumps(tags or {}))
    result = finished_result(folder, tracking_uri)
    if result is None:
        raise RuntimeError(f"the distributed trial in {folder} ended without a finished run")
    return result


def starts_from_dense(cfg: Config) -> bool:
    return cfg.method == "adaptive_dropout" and cfg.adl.init == "dense"


def given_dense_model(cfg: Config) -> tuple[str, str]:
    """The knob that can name the trained dense model a trial starts from, and the model it names ("": none)."""
    if cfg.method in PRUNES_DENSE:
        return "prune.dense_from", cfg.prune.dense_from
    return "adl.init_from", cfg.adl.init_from if starts_from_dense(cfg) else ""


def _dense_source(cfg: Config, tracking_uri: str, runs_dir: Path, tags: dict[str, str],
                  tokenizer_state: dict) -> tuple[str, ConformerCTC]:
    """The dense model a trial starts from: the one prune.dense_from (adl.init_from) names, which must have the
    trial's output units, else the finished dense run of this recipe, trained now (as its own run) when there
    is none. (its run id or path, the model)"""
    knob, given = given_dense_model(cfg)
    if given:
        return load_model_from(given, tracking_uri, knob, tokenizer_state)
    run_id = find_dense_run(cfg, tracking_uri)
    if run_id is None:
        print("no finished dense run of this recipe: training it first")
        parent = {k: v for k, v in tags.items() if k == "mlflow.parentRunId"}
        run_id = run_trial(dense_config(cfg), tracking_uri, runs_dir, tags=parent).run_id
    else:
        print(f"reusing dense run {run_id}")
    return run_id, load_dense_model(run_id, tracking_uri)


@dataclass
class Trainable:
    model: ConformerCTC
    trainer: Trainer
    adl: AdlController | None
    model_cfg: ModelConfig  # the widths the model was built with (small dense: its own)
    widths: list[BlockWidths]
    tags: dict[str, str] = field(default_factory=dict)


def _trainable(ctx: TrialContext, start: ConformerCTC | None = None,
               widths: list[BlockWidths] | None = None) -> Trainable:
    """The model a trial trains (dense, with ADLs, small dense, or a pruned architecture) and its trainer;
    every rank of a distributed trial builds the same. `start`: the trained dense model adaptive dropout
    starts from (adl.init = "dense"), trained with ADLs for adl.pruning_epochs. `widths`: retrain_pruned's
    architecture, trained from a fresh initialisation for train.epochs."""
    cfg, vocab = ctx.cfg, ctx.tokenizer.vocab_size
    if widths is not None:
        model = build_model(cfg, vocab, cfg.model, widths)
        return Trainable(model, ctx.trainer(model, "checkpoint.pt"), None, cfg.model, widths)
    if cfg.method == "small_dense":
        target = baseline_target(cfg, vocab)
        model_cfg, widths = baselines.small_dense_shape(cfg.model, target, cfg.prune.shrink, cfg.features.n_mels, vocab)
        shape = f"d{model_cfg.d_model}-ffn{widths[0].ffn1}-q{widths[0].query_dims[0]}-conv{widths[0].conv}"
        model = build_model(cfg, vocab, model_cfg, widths)
        return Trainable(model, ctx.trainer(model, "checkpoint.pt"), None, model_cfg, widths,
                         {"small_dense.shape": shape, TAG_BUDGET: str(target)})
    model = build_model(cfg, vocab).to(ctx.device)  # ADLs and multipliers are made beside it
    if cfg.method != "adaptive_dropout":
        return Trainable(model, ctx.trainer(model, "checkpoint.pt"), None, cfg.model, dense_widths(cfg.model))
    if start is not None:
        model.load_state_dict(start.state_dict())  # shapes checked before the run began
    layers = attach_adls(model, cfg.adl.locations, AdlSettings.from_config(cfg.adl))
    budget = (BudgetController(model, cfg.model, cfg.adl.target_reduction, cfg.adl.target_warmup, cfg.adl.target_measure,
                               cfg.adl.anti_windup) if cfg.adl.target_reduction else None)
    adl = AdlController(layers, cfg.adl, budget)
    teacher = distiller_for(start.to(ctx.device) if start is not None else None, cfg.adl.distill,
                            cfg.adl.distill_hidden, cfg.adl.distill_blocks)
    trainer = ctx.trainer(model, "checkpoint.pt", epochs=cfg.adl.pruning_epochs if starts_from_dense(cfg) else None,
                          distiller=teacher,
                          param_groups=adl.param_groups(model, cfg.train.lr, cfg.train.weight_decay),
                          regulariser=adl.loss, on_step=adl.begin_step,
                          on_epoch_start=adl.begin_epoch, checkpointed=adl.checkpointed(), epoch_state=adl)
    return Trainable(model, trainer, adl, cfg.model, dense_widths(cfg.model))


def _train(ctx: TrialContext, start: ConformerCTC | None = None, widths: list[BlockWidths] | None = None) -> Outcome:
    """dense, small_dense and retrain_pruned (of `widths`): train. adaptive_dropout: train with ADLs (from
    scratch, or from the dense model `start`), then prune the units they drop (no fine-tuning unless
    adl.finetune_epochs asks for it)."""
    cfg = ctx.cfg
    t = _trainable(ctx, start, widths)
    mlflow.set_tags(t.tags)
    seconds = ctx.fit(t.trainer, adl=t.adl)
    if t.trainer.skipped:
        mlflow.set_tag("train_utterances_skipped", str(t.trainer.skipped))
    if not t.adl:
        return Outcome(t.model.eval(), t.model_cfg, t.widths, seconds)
    model, adl = t.model, t.adl

    def recalibrate() -> None:  # BatchNorm statistics for the masks evaluation now uses
        if cfg.adl.recalibrate_bn and adl.layers:  # no layer, no mask noise: the dense model (invariant 3)
            batches = t.trainer.sample_batches(RECALIBRATION_UTTERANCES, seed=cfg.train.seed)
            recalibrate_batch_norm(model, batches, t.trainer.autocast)
    _log_cost_of_the_cut(ctx, model, adl, recalibrate)
    recalibrate()
    pruned, widths = prune(model.eval(), cfg.model, adl_decisions(model))
    # the architecture is fixed from here: fine-tuning trains the model that is deployed, with the teacher
    seconds += ctx.finetune(pruned, cfg.adl.finetune_epochs, t.trainer.distiller)
    return Outcome(pruned, cfg.model, widths, seconds, adl=adl)


def _help_train(ctx: TrialContext, widths: list[BlockWidths] | None) -> None:
    """A rank other than 0 of a distributed trial: the same model and trainer, resumed from the same
    checkpoint, training its share of every batch; no run, no evaluation, no export."""
    trainer = _trainable(ctx, widths=widths).trainer
    trainer.load_checkpoint()
    trainer.fit(lambda: {}, lambda epoch, metrics: None)


def _log_cost_of_the_cut(ctx: TrialContext, model: ConformerCTC, adl: AdlController,
                         recalibrate: Callable[[], None]) -> None:
    """The ADL model's dev WER before the threshold cut (every unit kept, scaled as evaluation scales
    it), with BatchNorm statistics of those masks: beside dev/wer after pruning, it tells a loss from
    the cut from a loss in training. Where a training mask's mean E[m] is not p (relaxed Gumbel-sigmoid
    masks, inference = "expected"), also the same with every unit scaled by p, as before E[m] was used."""
    metrics = {}
    modes = {"mean": "adl/dev_{}_uncut"}
    if any(l.relaxed_forward and l.settings.inference == "expected" for l in adl.layers):
        modes["p"] = "adl/dev_{}_uncut_scaled_by_p"
    try:
        for mode, name in modes.items():
            adl.set_uncut(mode)
            recalibrate()
            wer, cer, _ = ctx.error_rates(model, "dev")
            metrics |= {name.format("wer"): wer, name.format("cer"): cer}
    finally:
        adl.set_uncut(None)
    mlflow.log_metrics(metrics)
    print(f"dev WER before the threshold cut {metrics['adl/dev_wer_uncut']:.2%}"
          + (f" (scaled by p: {metrics['adl/dev_wer_uncut_scaled_by_p']:.2%})" if "p" in modes else ""))


def baseline_target(cfg: Config, vocab_size: int) -> int:
    """The baselines' parameter target."""
    dense_total = analytic_params(cfg.model, dense_widths(cfg.model), cfg.features.n_mels, vocab_size)["total"]
    return baselines.resolve_target(cfg.prune.target_params, cfg.prune.target_reduction, dense_total)


def _prune_dense_run(ctx: TrialContext, dense: ConformerCTC) -> Outcome:
    """Magnitude pruning of the trained dense model to the budget, structured (physically smaller) or
    unstructured (zeros in dense shapes), with optional fine-tuning."""
    cfg = ctx.cfg
    target = baseline_target(cfg, ctx.tokenizer.vocab_size)
    mlflow.set_tag(TAG_BUDGET, str(target))
    dense = dense.to(ctx.device).eval()
    teacher = distiller_for(copy.deepcopy(dense) if cfg.prune.finetune_epochs else None,  # before pruning changes it
                            cfg.prune.distill, cfg.prune.distill_hidden, cfg.prune.distill_blocks)
    if cfg.method in STRUCTURED:
        plan = baselines.structured_plan(dense, cfg.model, target, cfg.prune.ranking, unit_scores(ctx, dense))
        pruned, widths = prune(dense, cfg.model, plan)
        return Outcome(pruned, cfg.model, widths, ctx.finetune(pruned, cfg.prune.finetune_epochs, teacher))
    baselines.apply_global_magnitude(dense, target)
    seconds = ctx.finetune(dense, cfg.prune.finetune_epochs, teacher)
    baselines.make_permanent(dense)
    return Outcome(dense.eval(), cfg.model, None, seconds)


def unit_scores(ctx: TrialContext, dense: ConformerCTC) -> list[dict[str, torch.Tensor]] | None:
    """The structured baselines' unit ranking from the calibration sample (None: magnitude's weight norms)."""
    cfg = ctx.cfg
    if cfg.method == "magnitude_structured":
        return None
    trainer = ctx.trainer(dense, "calibration.pt", epochs=1, distributed=False)  # its batches and CTC loss only
    sample = trainer.sample(cfg.prune.calibration_utterances, seed=cfg.train.seed)
    if cfg.method == "activation_structured":
        return importance.activation_scores(dense, ((feats, b.feature_lengths) for b, feats in sample))
    return importance.taylor_scores(dense, ((feats, b.feature_lengths, b.targets, b.target_lengths) for b, feats in sample),
                                    trainer.ctc)


def epochs_received(cfg: Config) -> int:
    """Epochs of training behind the final model: fine-tuned baselines get more, and tables say so."""
    if cfg.method == "adaptive_dropout":  # from a dense model: its epochs, then the pruning phase
        return cfg.train.epochs + cfg.adl.finetune_epochs + (cfg.adl.pruning_epochs if starts_from_dense(cfg) else 0)
    if cfg.method in PRUNES_DENSE:  # the dense source's epochs, then fine-tuning
        return cfg.train.epochs + cfg.prune.finetune_epochs
    return cfg.train.epochs


def _evaluate_and_log(ctx: TrialContext, outcome: Outcome) -> dict[str, float]:
    """The final figures (docs/methods.md) and the artifacts, the same for every method."""
    cfg, model = ctx.cfg, outcome.model
    dev_wer, dev_cer, _ = ctx.error_rates(model, "dev")
    test_wer, test_cer, test_hyps = ctx.error_rates(model, "test")
    dense = build_model(cfg, ctx.tokenizer.vocab_size).to(ctx.device).eval()  # the full-size reference
    final = {"dev/wer": dev_wer, "dev/cer": dev_cer, "test/wer": test_wer, "test/cer": test_cer,
             "time/train_s": outcome.train_seconds, "train/epochs_total": epochs_received(cfg),
             **size_metrics(model, outcome.model_cfg, outcome.widths, dense)}
    for subset in cfg.data.extra_test_subsets:
        final[f"{subset}/wer"], final[f"{subset}/cer"], _ = ctx.error_rates(model, subset)
    mlflow.log_metrics(final, step=cfg.train.epochs)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "config.toml").write_text(dumps_toml(to_dict(cfg)))
        widths = outcome.widths or dense_widths(cfg.model)
        save_model(tmp / "model.pt", outcome.model_cfg, model.cpu(), widths,
                   {"feature_mean": ctx.mean, "feature_std": ctx.std, "tokenizer": ctx.tokenizer.state(),
                    "features": asdict(cfg.features)})  # what `study.transcribe` computes from audio
        examples = [f"REF: {u.text}\nHYP: {h}\n" for u, h in zip(ctx.data["test"].utterances[:50], test_hyps)]
        (tmp / "test_examples.txt").write_text("\n".join(examples))
        errors, words = utterance_word_errors(ctx.data["test"].transcripts, test_hyps)
        (tmp / UTTERANCE_ERRORS).write_text(json.dumps(
            {"ids": [u.id for u in ctx.data["test"].utterances], "errors": errors, "words": words}))
        if outcome.adl:
            outcome.adl.save_histogram(tmp / "retention_histogram.png")
            probs = {loc: [round(float(p), 5) for p in v] for loc, v in outcome.adl.by_location().items()}
            (tmp / "retention.json").write_text(json.dumps(probs))
        mlflow.log_artifacts(str(tmp))
    return final
