"""The input pipeline: padded batches, normalisation on the batch's device, prefetching in order."""
from __future__ import annotations

import threading

import pytest
import torch

from study.data.batching import make_batches, normalise, pad_batch, prefetch


def utterances(lengths: list[int], n_mels: int = 6) -> list[torch.Tensor]:
    torch.manual_seed(0)
    return [torch.randn(n, n_mels).to(torch.float16) for n in lengths]


def test_normalised_batch_equals_each_utterance_normalised_alone_and_padding_stays_zero():
    feats = utterances([7, 3, 5])
    mean, std = torch.randn(6), torch.rand(6) + 0.5
    batch = pad_batch([0, 1, 2], feats, targets=[[1, 2], [3], [4, 5, 6]])
    assert batch.features.dtype == torch.float16 and batch.features.shape == (3, 7, 6)  # (B, T, F), raw
    normed = normalise(batch.features, batch.feature_lengths, mean, std)
    for i, f in enumerate(feats):
        assert torch.equal(normed[i, : len(f)], (f.float() - mean) / std)
        assert torch.equal(normed[i, len(f):], torch.zeros(7 - len(f), 6))
    assert batch.targets.tolist() == [[1, 2, 0], [3, 0, 0], [4, 5, 6]] and batch.target_lengths.tolist() == [2, 1, 3]


def test_prefetch_yields_every_batch_in_order():
    feats = utterances([5, 9, 4, 8, 6, 7, 3])
    batches = make_batches([len(f) for f in feats], max_frames=16, shuffle_seed=3)
    for background in (True, False):
        got = [b.indices for b in prefetch(batches, lambda idx: pad_batch(idx, feats), background=background)]
        assert got == batches and sorted(i for b in got for i in b) == list(range(7))


def test_prefetch_hands_a_producer_error_to_the_consumer():
    def make(indices):
        if indices == [2]:
            raise ValueError("bad utterance 2")
        return indices
    with pytest.raises(ValueError, match="bad utterance 2"):
        list(prefetch([[0], [1], [2], [3]], make))


def test_a_consumer_that_stops_early_leaves_no_producer_behind():
    before = threading.active_count()
    for item in prefetch([[i] for i in range(100)], lambda idx: idx, depth=2):
        if item == [3]:
            break
    assert threading.active_count() == before


def test_frequency_warping_moves_a_formant_by_its_factor_and_keeps_identity_at_one():
    from study.config import FeatureConfig
    from study.data.features import SpecAugment, warp_frequencies
    x = torch.zeros(3, 5, 80)  # (B, T, F): one spectral peak at bin 30 in every frame
    x[:, :, 30] = 1.0
    warped = warp_frequencies(x, torch.tensor([1.0, 1.1, 0.9]))
    assert torch.equal(warped[0], x[0])
    centre = (warped * torch.arange(80.0)).sum(2) / warped.sum(2)  # (B, T) the peak's position
    assert centre[1].tolist() == pytest.approx([33.0] * 5, abs=0.05)  # 30 * 1.1
    assert centre[2].tolist() == pytest.approx([27.0] * 5, abs=0.05)  # 30 * 0.9
    augment = SpecAugment(FeatureConfig(freq_warp=0.1, freq_masks=0, time_masks=0))
    torch.manual_seed(0)
    y = augment(torch.randn(4, 20, 80))
    assert y.shape == (4, 20, 80) and torch.isfinite(y).all()
