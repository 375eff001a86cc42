"""data.source = "manifest": your own corpus, one manifest per split, checked before any training.

Every entry's audio header is read (a missing, unreadable or empty file, or a segment past its end, is
an error naming the manifest line), transcripts are normalised as the output units need (characters the
units cannot write are reported with counts and examples; a transcript left empty is an error), and
speakers shared between splits are reported, or refused with data.manifest.speaker_disjoint.
"""
from __future__ import annotations

import os
import sys
from collections import Counter
from functools import lru_cache

import soundfile

from study.config import ManifestConfig
from study.data import text
from study.data.manifest import DataError, Utterance
from study.data.manifest_formats import Entry, read_entries

SPLITS = ("train", "dev", "test")
SEGMENT_SLACK = 0.02  # seconds a segment may run past its file's end (rounded times in manifests)
EXAMPLES = 3


@lru_cache(maxsize=4096)  # segments of one recording read its header once
def _file_seconds(path: str) -> float | str:
    """The file's duration, or why it cannot be read."""
    try:
        info = soundfile.info(path)
    except Exception as exc:  # soundfile raises LibsndfileError, RuntimeError or OSError
        return f"cannot read audio ({exc})"
    return info.frames / info.samplerate if info.frames else "audio file holds no samples"


def to_utterance(entry: Entry, need_text: bool = True) -> Utterance:
    """The entry checked against its audio file and its transcript normalised; DataError names the line.
    `need_text`: a transcript left empty is an error (training), else allowed (transcribing)."""
    seconds = _file_seconds(entry.audio)
    if isinstance(seconds, str):
        raise DataError(f"{entry.where}: {entry.audio}: {seconds}" if os.path.isfile(entry.audio)
                        else f"{entry.where}: {entry.audio}: audio file not found")
    transcript = text.normalize(entry.text)
    if need_text and not transcript:
        raise DataError(f"{entry.text_where or entry.where}: text: empty after normalisation ({entry.text!r}); the output units "
                        "write a-z, apostrophe and space")
    offset, duration = entry.offset, entry.duration
    start = offset or 0.0
    if duration is None or (offset is None and duration >= seconds - SEGMENT_SLACK):
        return Utterance(entry.id, entry.audio, seconds - start, transcript, entry.speaker, offset)
    if start + duration > seconds + SEGMENT_SLACK:
        raise DataError(f"{entry.where}: the segment {start:g} s + {duration:g} s runs past the end of "
                        f"{entry.audio} ({seconds:.2f} s)")
    return Utterance(entry.id, entry.audio, duration, transcript, entry.speaker, start)


def load_manifest_splits(cfg: ManifestConfig) -> dict[str, list[Utterance]]:
    """{"train", "dev", "test"} -> utterances in manifest order; reports (stderr) what the units drop and
    which speakers the splits share."""
    missing = [f"data.manifest.{name}" for name in SPLITS if not getattr(cfg, name)]
    if missing:
        raise DataError(f"data.source = \"manifest\" needs a manifest per split: set {', '.join(missing)}")
    splits = {}
    for name in SPLITS:
        path = getattr(cfg, name)
        entries = read_entries(path, cfg.format)
        if not entries:
            raise DataError(f"{path}: the {name} manifest lists no utterances")
        _check_unique_ids(entries)
        _report_unwritable(name, entries)
        splits[name] = [to_utterance(e) for e in entries]
    _check_speakers(splits, cfg)
    return splits


def _check_unique_ids(entries: list[Entry]) -> None:
    first: dict[str, str] = {}
    for e in entries:
        if e.id in first:
            raise DataError(f"{e.where}: utterance id {e.id!r} listed twice (first at {first[e.id]})")
        first[e.id] = e.where


def unwritable_characters(entries: list[Entry]) -> tuple[Counter, dict[str, str]]:
    """Characters of the transcripts that normalisation turns into spaces: their counts, and where each
    is first seen."""
    counts, first = Counter(), {}
    for e in entries:
        for ch in e.text.lower():
            if ch not in text.ALPHABET and not ch.isdigit() and not ch.isspace():
                counts[ch] += 1
                first.setdefault(ch, e.text_where or e.where)
    return counts, first


def _report_unwritable(split: str, entries: list[Entry]) -> None:
    counts, first = unwritable_characters(entries)
    if counts:
        listed = ", ".join(f"{ch!r} x{n} (e.g. {first[ch]})" for ch, n in counts.most_common(EXAMPLES))
        more = f" and {len(counts) - EXAMPLES} more" if len(counts) > EXAMPLES else ""
        print(f"warning: {split} transcripts hold {sum(counts.values())} characters the output units cannot write "
              f"(a-z, apostrophe, space; digits are spelled out); they become spaces: {listed}{more}", file=sys.stderr)


def _check_speakers(splits: dict[str, list[Utterance]], cfg: ManifestConfig) -> None:
    speakers = {name: {u.speaker for u in utts} - {""} for name, utts in splits.items()}
    if cfg.speaker_disjoint and any(u.speaker == "" for utts in splits.values() for u in utts):
        raise DataError("data.manifest.speaker_disjoint needs a speaker for every utterance (NeMo: `speaker`, "
                        "Kaldi: utt2spk, TSV: a speaker column)")
    for a, b in (("train", "dev"), ("train", "test"), ("dev", "test")):
        shared = sorted(speakers[a] & speakers[b])
        if not shared:
            continue
        message = (f"the {a} and {b} splits share {len(shared)} speaker(s), e.g. {shared[:EXAMPLES]} "
                   f"({getattr(cfg, a)}, {getattr(cfg, b)})")
        if cfg.speaker_disjoint:
            raise DataError(f"data.manifest.speaker_disjoint: {message}")
        print(f"warning: {message}", file=sys.stderr)
