"""The splits of a configuration in memory: listed, checked and turned into (cached) log-mel features."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch

from study.config import Config
from study.data.feature_cache import ChainedFeatures, MappedFeatures
from study.data.features import compute_features, speed_copy
from study.data.manifest import Utterance
from study.data.splits import SPLITS, load_extra_tests, load_splits


@dataclass
class SplitData:
    utterances: list[Utterance]
    features: Sequence[torch.Tensor]  # (frames, n_mels) each; MappedFeatures from the cache

    # Cached: read per batch and per utterance, and the split never changes after loading.
    @cached_property
    def transcripts(self) -> list[str]:
        return [u.text for u in self.utterances]

    @cached_property
    def lengths(self) -> list[int]:
        if isinstance(self.features, (MappedFeatures, ChainedFeatures)):
            return self.features.frames()  # from the index, without touching the mapped data
        return [f.shape[0] for f in self.features]


def prepare_data(cfg: Config) -> dict[str, SplitData]:
    """Lists and checks every split, then computes (or reads cached) log-mel features; the training
    split's speed-perturbed copies (features.speed_perturb) follow its originals, one cache per factor."""
    splits = {**load_splits(cfg.data), **load_extra_tests(cfg.data)}
    cache = Path(cfg.data.cache_dir) / "features"
    data = {}
    for name in [*SPLITS, *cfg.data.extra_test_subsets]:
        utts = splits[name]
        if name != "train":
            data[name] = SplitData(utts, compute_features(utts, cfg.features, cache))
            continue
        originals = [u for u in utts if u.duration <= cfg.data.max_train_seconds]
        # the originals, then their copy at each factor: a cache each, so factor lists share caches
        factors = [1.0, *cfg.features.speed_perturb]
        copies = [speed_copy(originals, factor) for factor in factors]
        parts = [compute_features(copy, cfg.features, cache, factor) for copy, factor in zip(copies, factors)]
        data[name] = SplitData([u for copy in copies for u in copy],
                               parts[0] if len(parts) == 1 else ChainedFeatures(parts))
    return data
