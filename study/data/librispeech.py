"""LibriSpeech: <root>/<subset>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac + one transcript per chapter.

Everything is validated while listing (missing folders, empty subsets, transcript lines without
audio, audio without transcript lines, unreadable headers) so that a broken corpus fails before
training starts, never hours into it. Only headers are read: one listdir per chapter folder and
one soundfile.info per file keep this fast for the 28k+ files of train-clean-100.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import astuple
from pathlib import Path

from study.data.audio import audio_duration
from study.data.manifest import DataError, Utterance
from study.data.text import normalize

_UTT_ID = re.compile(r"^(\d+)-(\d+)-(\d+)$")


def load_librispeech(root: str | Path, subsets: list[str], cache_dir: str | Path | None = None) -> list[Utterance]:
    """Utterances of all `subsets` (e.g. ["train-clean-100", "train-clean-360"]) joined and sorted by id.

    With `cache_dir`, each subset's checked listing is kept in <cache_dir>/manifests/ per chapter, with
    the chapter folder's and transcript's modification stamps: a later call re-reads only chapters that
    changed (two stats per chapter instead of a listing and a header read per file)."""
    root = Path(root).absolute()
    if not root.is_dir():
        raise DataError(f"{root}: LibriSpeech root not found")
    if not subsets:
        raise DataError(f"{root}: no LibriSpeech subsets requested")
    if len(set(subsets)) != len(subsets):
        # A subset named twice would silently double its weight in training.
        raise DataError(f"{root}: subset listed more than once in {subsets}")
    utterances: list[Utterance] = []
    for subset in subsets:
        utterances.extend(_load_subset(root / subset, cache_dir))
    utterances.sort(key=lambda u: u.id)
    return utterances


def _load_subset(subset_dir: Path, cache_dir: str | Path | None) -> list[Utterance]:
    if not subset_dir.is_dir():
        raise DataError(f"{subset_dir}: LibriSpeech subset folder not found")
    cache_path = None
    if cache_dir is not None:
        digest = hashlib.sha256(str(subset_dir).encode()).hexdigest()[:12]
        cache_path = Path(cache_dir) / "manifests" / f"librispeech-{subset_dir.name}-{digest}.json"
    cached = json.loads(cache_path.read_text()) if cache_path and cache_path.is_file() else {}
    chapters, utterances = {}, []
    for speaker_entry in _subdirs(subset_dir):
        for chapter_entry in _subdirs(Path(speaker_entry.path)):
            chapter_dir = Path(chapter_entry.path)
            stamp = _stamp(chapter_dir, f"{speaker_entry.name}-{chapter_entry.name}.trans.txt")
            entry = cached.get(str(chapter_dir))
            if entry and entry["stamp"] == stamp:
                rows = entry["utterances"]
            else:
                rows = [astuple(u) for u in _load_chapter(chapter_dir, speaker_entry.name, chapter_entry.name)]
            chapters[str(chapter_dir)] = {"stamp": stamp, "utterances": rows}
            utterances.extend(Utterance(*row) for row in rows)
    if not utterances:
        raise DataError(f"{subset_dir}: LibriSpeech subset holds no utterances (empty split)")
    if cache_path and chapters != cached:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(chapters))
        tmp.replace(cache_path)  # atomic: workers that list at once agree
    return utterances


def _stamp(chapter_dir: Path, trans_name: str) -> list[int]:
    """What changes when a chapter's files are added, removed, renamed or its transcript edited."""
    folder = chapter_dir.stat()
    try:
        trans = (chapter_dir / trans_name).stat()
        return [folder.st_mtime_ns, trans.st_mtime_ns, trans.st_size]
    except FileNotFoundError:
        return [folder.st_mtime_ns, 0, -1]


def _subdirs(folder: Path) -> list[os.DirEntry[str]]:
    with os.scandir(folder) as it:  # scandir: is_dir() comes from the listing, no extra stat per entry
        return sorted((e for e in it if e.is_dir() and not e.name.startswith(".")), key=lambda e: e.name)


def _load_chapter(chapter_dir: Path, speaker: str, chapter: str) -> list[Utterance]:
    names = set(os.listdir(chapter_dir))
    flacs = {name[: -len(".flac")] for name in names if name.endswith(".flac")}
    trans_name = f"{speaker}-{chapter}.trans.txt"
    trans_path = chapter_dir / trans_name
    if trans_name not in names:
        if flacs:
            raise DataError(f"{trans_path}: transcript not found for {len(flacs)} audio files in {chapter_dir}")
        return []  # a stray empty folder is harmless

    transcripts = _read_transcript(trans_path, f"{speaker}-{chapter}-")
    for utt_id in sorted(transcripts):
        if utt_id not in flacs:
            raise DataError(f"{chapter_dir / (utt_id + '.flac')}: audio file named in {trans_path} not found")
    for utt_id in sorted(flacs):
        if utt_id not in transcripts:
            # An audio file without a line means the transcript is incomplete: fail rather than drop data.
            raise DataError(f"{chapter_dir / (utt_id + '.flac')}: audio file has no line in {trans_path}")

    utterances = []
    for utt_id, text in sorted(transcripts.items()):
        path = chapter_dir / f"{utt_id}.flac"
        utterances.append(Utterance(utt_id, str(path), audio_duration(path), text, speaker))
    return utterances


def _read_transcript(trans_path: Path, id_prefix: str) -> dict[str, str]:
    """Maps utterance id to normalised text; every line must be `<speaker>-<chapter>-<utt> TEXT`."""
    try:
        lines = trans_path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{trans_path}: cannot read transcript ({exc})") from exc
    transcripts: dict[str, str] = {}
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue  # trailing blank lines are common and carry nothing
        parts = line.strip().split(maxsplit=1)
        utt_id = parts[0]
        text = normalize(parts[1]) if len(parts) == 2 else ""
        if not _UTT_ID.match(utt_id) or not utt_id.startswith(id_prefix) or not text:
            raise DataError(
                f"{trans_path}:{line_no}: malformed transcript line {line!r} "
                f"(expected '{id_prefix}<utt> TRANSCRIPT')"
            )
        if utt_id in transcripts:
            raise DataError(f"{trans_path}:{line_no}: utterance {utt_id} listed twice")
        transcripts[utt_id] = text
    return transcripts
