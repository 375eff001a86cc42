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
