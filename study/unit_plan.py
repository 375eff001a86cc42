"""Where would each structured baseline cut a trained model? `python -m study.unit_plan EXPERIMENT MODEL.pt`
prints, for structured magnitude, weight x activation and first-order Taylor ranking, the share of units
that each block's groups (ffn1, ffn2, query, value, conv) keep when the model is pruned in one shot to the
experiment's budget (prune.target_params or prune.target_reduction, or --reduction), with its
prune.ranking and its calibration sample (prune.calibration_utterances of the training split, seeded by
train.seed). No training and nothing logged: the plan a baseline trial would start its fine-tuning from.

    python -m study.unit_plan experiments/prune_to_bar.toml runs/artifacts/<run>/artifacts/model.pt --reduction 0.5
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

import torch

from study.config import ConfigError
from study.data.features import mean_std
from study.data.prepared import prepare_data
from study.data.tokenizer import tokenizer_from_state
from study.method import baselines
from study.method.pruning import GROUPS, UnitDecision
from study.model import ConformerCTC
from study.model.io import load_model
from study.names import STRUCTURED
from study.sweep.experiment_file import load_experiment
from study.trial import baseline_target, unit_scores
from study.trial_context import TrialContext


def kept_shares(plan: list[dict[str, UnitDecision]]) -> list[dict[str, float]]:
    """Per block, per group: the fraction of its units the plan keeps."""
    return [{g: float(decisions[g].keep.float().mean()) for g in GROUPS} for decisions in plan]


def plans(ctx: TrialContext, dense: ConformerCTC, methods: tuple[str, ...] = STRUCTURED) -> dict[str, list[dict[str, float]]]:
    """Each structured method's one-shot plan for `dense` at ctx.cfg's budget, as kept shares."""
    target = baseline_target(ctx.cfg, ctx.tokenizer.vocab_size)
    shares = {}
    for method in methods:
        ranked = dataclasses.replace(ctx, cfg=dataclasses.replace(ctx.cfg, method=method))
        scores = unit_scores(ranked, dense)
        shares[method] = kept_shares(baselines.structured_plan(dense, ctx.cfg.model, target, ctx.cfg.prune.ranking, scores))
    return shares


def table(shares: dict[str, list[dict[str, float]]]) -> str:
    lines = [f"{'method':<24}{'block':>6}" + "".join(f"{g:>8}" for g in GROUPS)]
    for method, blocks in shares.items():
        for b, groups in enumerate(blocks):
            lines.append(f"{method:<24}{b:>6}" + "".join(f"{groups[g]:>8.2f}" for g in GROUPS))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study.unit_plan", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", type=Path, help="experiment TOML file: the recipe the model was trained with")
    parser.add_argument("model", type=Path, help="a dense model.pt this harness exported")
    parser.add_argument("--reduction", type=float, help="fraction of parameters to remove (default: the file's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key")
    args = parser.parse_args(argv)
    if not args.model.is_file():
        parser.error(f"{args.model}: no such model file")
    from sweep import parse_overrides
    try:
        overrides = parse_overrides(args.set)
        if args.reduction is not None:
            overrides |= {"prune.target_reduction": args.reduction, "prune.target_params": 0}
        cfg = load_experiment(args.experiment).config(extra=overrides)
    except ConfigError as error:
        parser.error(str(error))
    dense, saved = load_model(args.model)
    tokenizer = tokenizer_from_state(saved.get("tokenizer"))
    data = prepare_data(cfg)
    mean, std = mean_std(data["train"].features)
    with tempfile.TemporaryDirectory(prefix="unit-plan-") as folder:
        ctx = TrialContext(cfg, data, tokenizer, mean, std, torch.device("cpu"), Path(folder))
        print(table(plans(ctx, dense.eval())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
