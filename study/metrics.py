"""Greedy CTC decoding and corpus-level error rates (jiwer), after study.text.normalize."""
from __future__ import annotations

import jiwer
import torch

from study import text


def greedy_decode(log_probs: torch.Tensor, lengths: torch.Tensor) -> list[str]:
    """(B, T, V), (B,) -> transcripts: best class per frame, repeats merged, blanks dropped."""
    best = log_probs.argmax(dim=-1).cpu()  # (B, T)
    out = []
    for row, n in zip(best, lengths.tolist()):
        ids = torch.unique_consecutive(row[:n]).tolist()
        out.append(text.decode(ids))
    return out


def _pairs(references: list[str], hypotheses: list[str]) -> tuple[list[str], list[str]]:
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    refs = [text.normalize(r) for r in references]
    if any(not r for r in refs):
        raise ValueError("a reference transcript is empty after normalisation")
    return refs, [text.normalize(h) for h in hypotheses]


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    """Corpus-level: total word edits over total reference words (not a mean of per-utterance WERs)."""
    return float(jiwer.wer(*_pairs(references, hypotheses)))


def char_error_rate(references: list[str], hypotheses: list[str]) -> float:
    return float(jiwer.cer(*_pairs(references, hypotheses)))
