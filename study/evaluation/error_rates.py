"""Corpus-level word and character error rates (jiwer), after study.data.text.normalize."""
from __future__ import annotations

import jiwer
import torch

from study.data import text
from study.data.prepared import SplitData
from study.data.tokenizer import Tokenizer
from study.evaluation.decoding import transcribe


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


def utterance_word_errors(references: list[str], hypotheses: list[str]) -> tuple[list[int], list[int]]:
    """Per utterance: word edits (substitutions + deletions + insertions) and reference words; their
    sums give the corpus WER. What the analysis resamples for confidence intervals."""
    out = jiwer.process_words(*_pairs(references, hypotheses))
    errors = [sum(chunk.ref_end_idx - chunk.ref_start_idx if chunk.type in ("substitute", "delete")
                  else chunk.hyp_end_idx - chunk.hyp_start_idx if chunk.type == "insert" else 0
                  for chunk in sentence)
              for sentence in out.alignments]
    return errors, [len(r) for r in out.references]


def char_error_rate(references: list[str], hypotheses: list[str]) -> float:
    return float(jiwer.cer(*_pairs(references, hypotheses)))


def error_rates(model: torch.nn.Module, data: SplitData, tokenizer: Tokenizer, mean: torch.Tensor,
                std: torch.Tensor, device: torch.device, max_frames: int) -> tuple[float, float, list[str]]:
    """WER, CER and the hypotheses of `model` on one split (greedy decoding)."""
    hyps = transcribe(model, data, tokenizer, mean, std, device, max_frames)
    return word_error_rate(data.transcripts, hyps), char_error_rate(data.transcripts, hyps), hyps
