"""Confidence from the test set itself: bootstrap resampling over test utterances.

Two seeds cannot tell a half-point difference from noise, so every row gets a 95% bootstrap interval
of its test WER, and every comparison of adaptive dropout with a baseline at the same budget the
paired bootstrap of Bisani and Ney (2004): the share of resampled test sets on which one system has
fewer errors than the other. WER is recomputed from word edits and reference words per utterance,
so a resampled WER is a corpus WER (sum over sum), as the logged one is. A row of several seeds uses
the mean of its seeds' WERs on each resampled set (the same utterances for every seed).
"""
from __future__ import annotations

import numpy as np

SAMPLES = 1000
SEED = 0  # fixed: the same figures every time the analysis runs


def resamples(n_utterances: int, samples: int = SAMPLES, seed: int = SEED) -> np.ndarray:
    """(samples, n) utterance indices drawn with replacement."""
    return np.random.default_rng(seed).integers(0, n_utterances, size=(samples, n_utterances))


def resampled_wer(runs: list[tuple[np.ndarray, np.ndarray]], idx: np.ndarray) -> np.ndarray:
    """(samples,) mean over `runs` (each (errors (n,), words (n,))) of the corpus WER of each resampled set."""
    return np.mean([errors[idx].sum(1) / words[idx].sum(1) for errors, words in runs], axis=0)


def interval(runs: list[tuple[np.ndarray, np.ndarray]], idx: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The percentile bootstrap interval of the (seed-mean) test WER."""
    wers = resampled_wer(runs, idx)
    tail = (1.0 - level) / 2
    return float(np.quantile(wers, tail)), float(np.quantile(wers, 1.0 - tail))


def probability_better(a: list[tuple[np.ndarray, np.ndarray]], b: list[tuple[np.ndarray, np.ndarray]],
                       idx: np.ndarray) -> float:
    """Share of resampled test sets on which system a has the lower (seed-mean) WER; ties count half."""
    wa, wb = resampled_wer(a, idx), resampled_wer(b, idx)
    return float(np.mean(wa < wb) + 0.5 * np.mean(wa == wb))
