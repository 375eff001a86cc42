"""CTC output units: characters or BPE subwords (sentencepiece), with id 0 the CTC blank in both.

The BPE model is trained on the normalised training transcripts only, cached under
`<cache_dir>/tokenizers/` by a hash of those transcripts and its settings, and travels inside every
exported model (`state()`), so a model file decodes on its own (`tokenizer_from_state`).
"""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Protocol

import torch

from study.config import TextConfig
from study.data import text

TOKENIZER_FORMAT_VERSION = 1


class Tokenizer(Protocol):
    units: str

    @property
    def vocab_size(self) -> int: ...  # output classes, blank included

    def encode(self, transcript: str) -> list[int]: ...  # ids >= 1 of the normalised transcript

    def decode(self, ids: list[int]) -> str: ...  # blanks (0) dropped

    def state(self) -> dict[str, torch.Tensor | str]: ...  # what an exported model carries


class CharTokenizer:
    """a-z, apostrophe and space (study.data.text.ALPHABET)."""
    units = "char"

    @property
    def vocab_size(self) -> int:
        return text.vocab_size()

    def encode(self, transcript: str) -> list[int]:
        return text.encode(transcript)

    def decode(self, ids: list[int]) -> str:
        return text.decode(ids)

    def state(self) -> dict[str, torch.Tensor | str]:
        return {"units": self.units}


class BpeTokenizer:
    """sentencepiece BPE; its piece i is CTC class i + 1."""
    units = "bpe"

    def __init__(self, model_proto: bytes):
        import sentencepiece  # only BPE needs it

        self.model_proto = model_proto
        self.processor = sentencepiece.SentencePieceProcessor(model_proto=model_proto)

    @property
    def vocab_size(self) -> int:
        return self.processor.get_piece_size() + 1

    def encode(self, transcript: str) -> list[int]:
        return [i + 1 for i in self.processor.encode(text.normalize(transcript))]

    def decode(self, ids: list[int]) -> str:
        return self.processor.decode([i - 1 for i in ids if i != text.BLANK])

    def state(self) -> dict[str, torch.Tensor | str]:
        return {"units": self.units, "model": torch.frombuffer(bytearray(self.model_proto), dtype=torch.uint8)}


def build_tokenizer(cfg: TextConfig, train_transcripts: list[str], cache_dir: str | Path) -> Tokenizer:
    """The configured units; a BPE model is trained once per (transcripts, settings) and cached."""
    if cfg.units == "char":
        return CharTokenizer()
    lines = [text.normalize(t) for t in train_transcripts]
    key = hashlib.sha256("\n".join([str(TOKENIZER_FORMAT_VERSION), str(cfg.bpe_vocab_size), *lines]).encode())
    path = Path(cache_dir) / "tokenizers" / f"bpe{cfg.bpe_vocab_size}-{key.hexdigest()[:12]}.model"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(_train_bpe(lines, cfg.bpe_vocab_size))
        tmp.replace(path)  # atomic: workers that train the same model at once agree on its bytes
    return BpeTokenizer(path.read_bytes())


def _train_bpe(lines: list[str], vocab_size: int) -> bytes:
    import sentencepiece

    model = io.BytesIO()
    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_writer=model, model_type="bpe", vocab_size=vocab_size,
            character_coverage=1.0, unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1, num_threads=1,
            minloglevel=2)  # one thread: the same transcripts always give the same model
    except RuntimeError as exc:  # e.g. more pieces asked for than the transcripts hold
        raise ValueError(f"text.bpe_vocab_size = {vocab_size}: sentencepiece refused it ({exc})") from None
    return model.getvalue()


def tokenizer_from_state(state: dict | None) -> Tokenizer:
    """The units an exported model was trained with (character units for files that name none)."""
    if not state or state["units"] == "char":
        return CharTokenizer()
    return BpeTokenizer(state["model"].numpy().tobytes())
