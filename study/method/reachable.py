"""The largest parameter reduction a pruning method can reach on a configuration, from the parameter
accounting alone: a target beyond it is refused when the experiment file is read, not after the dense
model has trained (magnitude pruning's BudgetError) or silently short of it (the budget controller lands
where its units run out and its trial reads COMPLETE)."""
from __future__ import annotations

import dataclasses

from study.config import Config
from study.data import text
from study.method.baselines import weight_matrices
from study.model.conformer import ConformerCTC, dense_widths
from study.model.size import analytic_params, front_end_params
from study.names import LOCATIONS, PRUNES_DENSE

NO_UNITS = {"ffn": {"ffn1": 0, "ffn2": 0}, "mhsa": {"query_dims": [], "value_dims": []}, "conv": {"conv": 0}}


def output_classes(cfg: Config) -> int:
    return text.vocab_size() if cfg.text.units == "char" else cfg.text.bpe_vocab_size + 1


def target_reduction(cfg: Config, dense_total: int) -> float | None:
    """The reduction the trial is asked for; None when it asks for none (or sizes a small dense model
    by shrinking d_model, which reaches any size)."""
    if cfg.method == "adaptive_dropout":
        return cfg.adl.target_reduction or None
    if cfg.method in PRUNES_DENSE or (
            cfg.method == "small_dense" and cfg.prune.shrink == "inner"):
        if cfg.prune.target_params:
            return 1 - cfg.prune.target_params / dense_total
        return cfg.prune.target_reduction or None
    return None


def prunable_locations(cfg: Config) -> tuple[str, ...]:
    return tuple(cfg.adl.locations) if cfg.method == "adaptive_dropout" else LOCATIONS


def smallest_model(cfg: Config) -> tuple[int, dict[str, int]]:
    """Parameters left when every prunable unit (or weight) is gone, and what is left, by part."""
    n_mels, vocab = cfg.features.n_mels, output_classes(cfg)
    if cfg.method == "magnitude_unstructured":
        left = _biases_and_norms(repr(cfg.model), cfg.model, n_mels, vocab)
        return left, {"biases and norms": left}
    gone = {}
    for location in prunable_locations(cfg):
        gone.update(NO_UNITS[location])
    widths = [dataclasses.replace(w, **gone) for w in dense_widths(cfg.model)]
    counts = analytic_params(cfg.model, widths, n_mels, vocab)
    head = cfg.model.d_model * vocab + vocab
    parts = {"front end": front_end_params(cfg.model, n_mels), "CTC head": head,
             "block norms": 2 * cfg.model.d_model * len(widths)}
    for location in LOCATIONS:  # a removed module keeps its output bias; a kept location keeps all of it
        parts[location if location not in prunable_locations(cfg) else f"{location} (what removal leaves)"] = counts[location]
    return counts["total"], parts


_BIASES_AND_NORMS: dict[tuple, int] = {}  # an experiment's points share a few models


def _biases_and_norms(key: str, model_cfg, n_mels: int, vocab: int) -> int:
    """Parameters outside the weight matrices unstructured pruning ranks (counted on a built model)."""
    if (key, n_mels, vocab) not in _BIASES_AND_NORMS:
        model = ConformerCTC(model_cfg, n_mels, vocab)
        weights = sum(m.weight.numel() for m, _ in weight_matrices(model))
        _BIASES_AND_NORMS[key, n_mels, vocab] = sum(p.numel() for p in model.parameters()) - weights
    return _BIASES_AND_NORMS[key, n_mels, vocab]


def check_reachable(cfg: Config) -> None:
    """Raises ValueError naming the target, the largest reachable reduction and what cannot be pruned."""
    dense_total = analytic_params(cfg.model, dense_widths(cfg.model), cfg.features.n_mels, output_classes(cfg))["total"]
    target = target_reduction(cfg, dense_total)
    if target is None:
        return
    smallest, parts = smallest_model(cfg)
    reachable = 1 - smallest / dense_total
    if target > reachable:
        listed = ", ".join(f"{name} {count:,}" for name, count in parts.items() if count)
        raise ValueError(f"method {cfg.method!r} asked for {target:.1%} fewer parameters, but at most {reachable:.1%} "
                         f"can go: removing every prunable unit leaves {smallest:,} of {dense_total:,} ({listed})")

