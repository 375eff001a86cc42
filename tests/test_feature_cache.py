"""The sharded, memory-mapped feature cache: the same features as computing them directly, built
in parallel shards once, read by any number of processes without a private copy."""
from __future__ import annotations

import signal
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import torchaudio

from study.config import FeatureConfig
from study.data import feature_cache
from study.data.audio import load_audio
from study.data.feature_cache import MappedFeatures, build_feature_cache
from study.data.logmel import LogMel
from study.data.splits import load_splits

REPO = Path(__file__).resolve().parents[1]


def test_parallel_shards_hold_exactly_the_features_of_each_utterance(tiny_config, tmp_path, monkeypatch):
    utterances = load_splits(tiny_config.data)["train"]
    paths, cfg = [u.path for u in utterances], FeatureConfig()
    sources = [(path, None) for path in paths]
    monkeypatch.setattr(feature_cache, "SHARD_UTTERANCES", 5)  # 24 utterances: 5 shards, the last of 4
    parallel = build_feature_cache(sources, asdict(cfg), cfg.n_mels, tmp_path / "parallel", workers=2)
    serial = build_feature_cache(sources, asdict(cfg), cfg.n_mels, tmp_path / "serial", workers=1)
    assert len(list((tmp_path / "parallel").glob("shard-*.f16"))) == 5 and len(parallel) == len(paths) == 24
    logmel = LogMel(cfg)
    with torch.inference_mode():
        for i in (0, 4, 5, 23):
            direct = logmel(load_audio(paths[i])).to(torch.float16)  # (frames, n_mels)
            assert torch.equal(parallel[i], direct) and torch.equal(serial[i], direct)
    assert parallel.frames() == [f.shape[0] for f in parallel]
    assert [f.shape for f in parallel[2:4]] == [parallel[2].shape, parallel[3].shape]
    assert not list(tmp_path.glob("*.tmp*"))  # the temporary folder became the cache

    (tmp_path / "parallel" / "shard-00000.f16").chmod(0o444)  # read again: mapped, never rewritten
    again = MappedFeatures(tmp_path / "parallel")
    assert torch.equal(again[7], parallel[7])


@pytest.mark.slow
def test_a_reader_maps_the_shards_instead_of_copying_them(tiny_config, tmp_path):
    """Touching every feature of a mapped cache adds file-backed pages (shared between workers),
    not private memory; the private memory of a process that copies the features grows by their size."""
    utterances = load_splits(tiny_config.data)["train"]
    cfg = FeatureConfig()
    folder = tmp_path / "cache"
    features = build_feature_cache([(u.path, None) for u in utterances] * 40, asdict(cfg), cfg.n_mels, folder)
    size_mb = sum(f.numel() for f in features) * 2 / 2**20
    script = f"""
import sys, torch
from study.data.feature_cache import MappedFeatures
def anon_mb():
    line = next(l for l in open("/proc/self/status") if l.startswith("RssAnon"))
    return int(line.split()[1]) / 1024
features = MappedFeatures(__import__("pathlib").Path({str(folder)!r}))
before = anon_mb()
total = sum(float(f[0, 0]) + float(f[-1, -1]) for f in features)  # touch every utterance
mapped = anon_mb() - before
copies = [f.clone() for f in features]
print(mapped, anon_mb() - before)
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True)
    mapped, copied = map(float, out.stdout.split())
    assert size_mb > 20 and mapped < 0.25 * size_mb < copied


def test_extraction_workers_die_of_sigterm_instead_of_inheriting_the_sweeps_handler():
    """sweep.py turns SIGTERM into KeyboardInterrupt; the pool ends its children with SIGTERM, and a
    forked child that kept the handler printed a traceback at the end of every first run."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt(signum)
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        with feature_cache.extraction_pool(2) as pool:
            handlers = pool.map(signal.getsignal, [signal.SIGTERM] * 2)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert handlers == [signal.SIG_DFL] * 2


def test_speed_perturbation_adds_resampled_training_copies_and_leaves_other_splits_alone(tiny_config):
    """features.speed_perturb = [0.9, 1.1]: the training split is the originals then one copy per
    factor, each 1/factor as long with the same transcript; dev and test are the unperturbed ones."""
    from study.data.prepared import prepare_data
    plain = prepare_data(tiny_config)
    tiny_config.features.speed_perturb = [0.9, 1.1]
    perturbed = prepare_data(tiny_config)
    n = len(plain["train"].utterances)
    train = perturbed["train"]
    assert len(train.utterances) == len(train.features) == 3 * n
    assert train.transcripts == plain["train"].transcripts * 3
    assert train.utterances[n].id == "sp0.9-" + train.utterances[0].id
    for i in (0, n - 1):
        assert torch.equal(train.features[i], plain["train"].features[i])  # the originals untouched
        frames = plain["train"].features[i].shape[0]
        for copy, factor in ((i + n, 0.9), (i + 2 * n, 1.1)):
            assert abs(train.features[copy].shape[0] - frames / factor) <= 2  # (frames, n_mels), 10 ms hop
            assert train.utterances[copy].duration == pytest.approx(train.utterances[i].duration / factor)

    def centroid(feats: torch.Tensor) -> float:  # energy-weighted mean mel bin of (frames, n_mels)
        energy = feats.float().exp()
        return float((energy * torch.arange(feats.shape[1])).sum() / energy.sum())
    # 0.9x speed moves the spectrum down, 1.1x up
    assert centroid(train.features[n]) < centroid(train.features[0]) < centroid(train.features[2 * n])
    for split in ("dev", "test"):
        assert perturbed[split].features.folder == plain[split].features.folder  # the same cache
    # one cache per factor: the originals' is the unperturbed split's, and another factor list reuses
    # the caches of the factors it shares
    assert [part.folder for part in train.features.parts][0] == plain["train"].features.folder
    assert train.lengths == [f.shape[0] for f in train.features]
    tiny_config.features.speed_perturb = [1.1]
    again = prepare_data(tiny_config)["train"]
    assert [p.folder for p in again.features.parts] == [p.folder for p in train.features.parts[::2]]


def test_a_speed_perturbed_cache_is_the_same_whatever_the_threads_or_shards(tiny_config, tmp_path, monkeypatch):
    """Resampling at 0.9x gives other float16 values with 1 thread than with 2 (checked here on this data):
    the cache computes every shard with FEATURE_THREADS, so a caller with 1 or 2 threads, in one shard or
    in a shard per process, builds the same cache."""
    utterances = load_splits(tiny_config.data)["train"]
    sources, cfg = [(u.path, None) for u in utterances], FeatureConfig()
    resample = torchaudio.transforms.Resample(round(16000 * 0.9), 16000)
    direct = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        with torch.inference_mode():
            direct[threads] = [LogMel(cfg)(resample(load_audio(p))).to(torch.float16) for p, _ in sources]
    assert any(not torch.equal(a, b) for a, b in zip(direct[1], direct[2]))  # the hazard is real on this data
    built = []
    for threads, parallel in ((1, False), (2, False), (1, True)):
        torch.set_num_threads(threads)
        monkeypatch.setattr(feature_cache, "SHARD_UTTERANCES", 10 if parallel else 2000)
        built.append(build_feature_cache(sources, asdict(cfg), cfg.n_mels, tmp_path / f"{threads}-{parallel}",
                                         workers=2 if parallel else 1, speed=0.9))
        assert torch.get_num_threads() == threads  # the caller's threads are left as they were
    for other in built[1:]:
        assert all(torch.equal(a, b) for a, b in zip(built[0], other))
    assert all(torch.equal(a, b) for a, b in zip(built[0], direct[feature_cache.FEATURE_THREADS]))
