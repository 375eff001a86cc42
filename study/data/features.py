"""Log-mel features, cached per split, with global mean/variance normalisation and SpecAugment.

Features are computed once per (manifest, feature config) and stored as float16 tensors, so a
trial and every later trial of a sweep reads them instead of decoding audio each epoch.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torchaudio

from study.config import FeatureConfig
from study.data.feature_cache import MappedFeatures, build_feature_cache
from study.data.manifest import Utterance, segment

FEATURE_FORMAT_VERSION = 2  # 2: sharded, memory-mapped


def _cache_key(utterances: list[Utterance], speed: float, cfg: FeatureConfig) -> str:
    settings = asdict(cfg)
    del settings["speed_perturb"]  # a split's copies and their speed are in the utterance list
    digest = hashlib.sha256(json.dumps([FEATURE_FORMAT_VERSION, settings]).encode())
    perturbed = "" if speed == 1 else f"\t{speed}"  # unperturbed splits keep their former keys
    for u in utterances:
        cut = "" if u.offset is None else f"\t@{u.offset}"  # whole-file utterances keep their former keys
        digest.update(f"{u.id}\t{u.path}\t{u.duration}{cut}{perturbed}\n".encode())
    return digest.hexdigest()[:16]


def speed_copy(utterances: list[Utterance], factor: float) -> list[Utterance]:
    """The utterances as heard at a speed factor: id prefixed `sp<factor>-`, duration / factor."""
    if factor == 1:
        return list(utterances)
    return [replace(u, id=f"sp{factor:g}-{u.id}", duration=u.duration / factor) for u in utterances]


def compute_features(utterances: list[Utterance], cfg: FeatureConfig, cache_dir: Path,
                     speed: float = 1.0) -> MappedFeatures:
    """The (frames, n_mels) float16 features of each utterance, in manifest order, read at `speed`,
    from the sharded, memory-mapped cache (study/data/feature_cache.py), computed there first if absent."""
    folder = Path(cache_dir) / _cache_key(utterances, speed, cfg)
    sources = [(u.path, segment(u, speed)) for u in utterances]
    return build_feature_cache(sources, asdict(cfg), cfg.n_mels, folder, speed=speed)


def mean_std(features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Global per-bin statistics over every training frame: two (n_mels,) tensors."""
    total = sum(f.shape[0] for f in features)
    s = sum(f.float().sum(0) for f in features)
    s2 = sum(f.float().pow(2).sum(0) for f in features)
    mean = s / total
    std = (s2 / total - mean.pow(2)).clamp_min(1e-8).sqrt()
    return mean, std


def warp_frequencies(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """(B, T, F), (B,) -> (B, T, F): each utterance's spectrum stretched along the frequency axis by its
    factor (> 1 moves energy up, as a shorter vocal tract does): bin k takes the value at bin k / factor,
    linearly interpolated, the top bin repeated past the edge. Vocal tract length perturbation (Jaitly
    and Hinton 2013) on the mel axis, which stands in for the Hz axis it was defined on."""
    bins = x.shape[2]
    source = (torch.arange(bins, device=x.device) / factor[:, None]).clamp(max=bins - 1)  # (B, F)
    low = source.floor().long()
    high = (low + 1).clamp(max=bins - 1)
    frac = (source - low)[:, None, :].to(x.dtype)  # (B, 1, F)

    def at(index: torch.Tensor) -> torch.Tensor:
        return x.gather(2, index[:, None, :].expand(-1, x.shape[1], -1))
    return at(low) * (1 - frac) + at(high) * frac


class SpecAugment(torch.nn.Module):
    """Frequency warping (features.freq_warp), then frequency and time masks, independent per utterance;
    training only."""

    def __init__(self, cfg: FeatureConfig):
        super().__init__()
        self.freq_warp = cfg.freq_warp
        self.freq = torchaudio.transforms.FrequencyMasking(cfg.freq_mask_width, iid_masks=True)
        self.time = torchaudio.transforms.TimeMasking(cfg.time_mask_width, iid_masks=True)
        self.freq_masks, self.time_masks = cfg.freq_masks, cfg.time_masks

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, F) -> (B, T, F)
        if self.freq_warp:
            x = warp_frequencies(x, 1 + self.freq_warp * (2 * torch.rand(x.shape[0], device=x.device) - 1))
        spec = x.transpose(1, 2).unsqueeze(1)  # (B, 1, F, T) as torchaudio expects
        for _ in range(self.freq_masks):
            spec = self.freq(spec)
        for _ in range(self.time_masks):
            spec = self.time(spec)
        return spec.squeeze(1).transpose(1, 2)
