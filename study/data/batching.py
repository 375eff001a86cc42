"""Length-bucketed batches: utterances of similar length share a batch, so padding stays small."""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch


@dataclass
class Batch:
    features: torch.Tensor  # (B, T, F) normalised log-mel, zero-padded
    feature_lengths: torch.Tensor  # (B,)
    targets: torch.Tensor  # (B, S) unit ids, zero-padded (S = 0 when decoding)
    target_lengths: torch.Tensor  # (B,)
    indices: list[int]  # positions in the split, to find the reference transcripts


def make_batches(lengths: list[int], max_frames: int, shuffle_seed: int | None) -> list[list[int]]:
    """Group indices sorted by length into batches whose padded size stays under max_frames.

    With a seed, batch order is shuffled (and neighbours jittered) so epochs differ but stay
    reproducible; without one, order is fixed (evaluation).
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    if shuffle_seed is not None:
        rng = random.Random(shuffle_seed)
        # Jitter within windows of 8 so the same utterances do not always share a batch.
        order = [i for w in range(0, len(order), 8) for i in rng.sample(order[w:w + 8], len(order[w:w + 8]))]
    batches, current, longest = [], [], 0
    for i in order:
        longest_if_added = max(longest, lengths[i])
        if current and longest_if_added * (len(current) + 1) > max_frames:
            batches.append(current)
            current, longest_if_added = [], lengths[i]
        current.append(i)
        longest = longest_if_added
    if current:
        batches.append(current)
    if shuffle_seed is not None:
        random.Random(shuffle_seed + 1).shuffle(batches)
    return batches


def collate(indices: list[int], features: list[torch.Tensor], mean: torch.Tensor, std: torch.Tensor,
            targets: list[list[int]] | None = None) -> Batch:
    """Normalised, zero-padded features and, when `targets` (unit ids per utterance) are given, padded targets."""
    feats = [(features[i].float() - mean) / std for i in indices]
    targets = [torch.tensor(targets[i] if targets else [], dtype=torch.long) for i in indices]
    return Batch(
        features=torch.nn.utils.rnn.pad_sequence(feats, batch_first=True),
        feature_lengths=torch.tensor([f.shape[0] for f in feats]),
        targets=torch.nn.utils.rnn.pad_sequence(targets, batch_first=True),
        target_lengths=torch.tensor([len(t) for t in targets]),
        indices=indices,
    )
