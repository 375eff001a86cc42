"""Text normalisation and the character vocabulary of the CTC head.

The one normalisation used everywhere (training targets, references and hypotheses before WER):
lower-case; digits spelled out one by one; every character outside a-z, apostrophe and space
becomes a space; runs of spaces collapse to one; no leading or trailing space.
"""
from __future__ import annotations

import re

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ALPHABET = " 'abcdefghijklmnopqrstuvwxyz"  # index 0 of the CTC output is the blank, then these
BLANK = 0

_NOT_IN_ALPHABET = re.compile(r"[^a-z' ]+")
_SPACES = re.compile(r" +")
_DIGIT = re.compile(r"[0-9]")


def normalize(text: str) -> str:
    text = _DIGIT.sub(lambda m: f" {DIGIT_WORDS[int(m.group())]} ", text.lower())
    text = _NOT_IN_ALPHABET.sub(" ", text)
    return _SPACES.sub(" ", text).strip()


def vocab_size() -> int:
    return len(ALPHABET) + 1  # + blank


def encode(text: str) -> list[int]:
    """Character ids of normalised text (blank excluded, so ids start at 1)."""
    return [ALPHABET.index(ch) + 1 for ch in normalize(text)]


def decode(ids: list[int]) -> str:
    return "".join(ALPHABET[i - 1] for i in ids if i != BLANK)
