"""Greedy CTC decoding: a model's transcripts of a split, in the split's order."""
from __future__ import annotations

import torch

from study.runtime import progress
from study.data.batching import make_batches, normalise, pad_batch, prefetch
from study.data.prepared import SplitData
from study.data.tokenizer import Tokenizer


def greedy_decode(log_probs: torch.Tensor, lengths: torch.Tensor, tokenizer: Tokenizer) -> list[str]:
    """(B, T, V), (B,) -> transcripts: best class per frame, repeats merged, blanks dropped."""
    best = log_probs.argmax(dim=-1).cpu()  # (B, T)
    out = []
    for row, n in zip(best, lengths.tolist()):
        ids = torch.unique_consecutive(row[:n]).tolist()
        out.append(tokenizer.decode(ids))
    return out


@torch.inference_mode()
def transcribe(model: torch.nn.Module, data: SplitData, tokenizer: Tokenizer, mean: torch.Tensor,
               std: torch.Tensor, device: torch.device, max_frames: int) -> list[str]:
    model.eval()
    hyps: dict[int, str] = {}
    mean, std = mean.to(device), std.to(device)
    batches = make_batches(data.lengths, max_frames, shuffle_seed=None)
    on_gpu = device.type == "cuda"
    for host_batch in prefetch(batches, lambda indices: pad_batch(indices, data.features, pin=on_gpu), background=on_gpu):
        batch = host_batch.to(device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_gpu):
            log_probs, lengths = model(normalise(batch.features, batch.feature_lengths, mean, std), batch.feature_lengths)
        hyps.update(zip(batch.indices, greedy_decode(log_probs.float(), lengths, tokenizer)))
        progress.beat()
    return [hyps[i] for i in range(len(data.utterances))]
