"""The manifest formats speech toolkits write, read into entries that remember where they came from.

    nemo   JSON lines, one utterance each: audio_filepath, duration, text; optional offset, speaker
    kaldi  a data directory: wav.scp and text, optional utt2spk and segments (utt2dur is not needed:
           durations come from the audio headers)
    tsv    a header line, then tab-separated rows: id, path, text; optional duration, speaker, offset

Relative audio paths are taken from the manifest's folder (a Kaldi directory's parent is not assumed).
Only the syntax is checked here; study/data/manifest_source.py checks the audio and the text.
"""
from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from study.data.manifest import DataError

FORMATS = ("nemo", "kaldi", "tsv")


@dataclass(frozen=True)
class Entry:
    where: str  # "file:line" of the line that listed the utterance, for error messages
    id: str
    audio: str  # absolute path
    text: str  # as written in the manifest
    speaker: str = ""  # "" when the manifest names none
    offset: float | None = None  # seconds into the file; None: from its start
    duration: float | None = None  # seconds; None: to the end of the file
    text_where: str = ""  # where the transcript is, when another line than `where` (Kaldi's text file)


def detect_format(path: Path, fmt: str = "auto") -> str:
    if fmt != "auto":
        return fmt
    if path.is_dir():
        return "kaldi"
    if path.suffix in (".json", ".jsonl"):
        return "nemo"
    if path.suffix == ".tsv":
        return "tsv"
    raise DataError(f"{path}: cannot tell the manifest's format from its name (a folder is read as a Kaldi data "
                    "directory, *.json / *.jsonl as NeMo, *.tsv as TSV): set data.manifest.format")


def read_entries(path: str | Path, fmt: str = "auto") -> list[Entry]:
    path = Path(path).absolute()
    if not path.exists():
        raise DataError(f"{path}: manifest not found")
    fmt = detect_format(path, fmt)
    if (fmt == "kaldi") != path.is_dir():
        raise DataError(f"{path}: a {fmt} manifest must be a {'folder' if fmt == 'kaldi' else 'file'}")
    return {"nemo": read_nemo, "kaldi": read_kaldi, "tsv": read_tsv}[fmt](path)


def _audio_path(folder: Path, value: str) -> str:
    return os.path.normpath(folder / value)  # an absolute value replaces the folder; "../" taken out


def _seconds(value: object, where: str, name: str, positive: bool) -> float:
    """A duration or offset: a finite number, > 0 (positive) or >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < 0 or (positive and value == 0):
        raise DataError(f"{where}: {name} must be a number {'> 0' if positive else '>= 0'} (seconds), got {value!r}")
    return float(value)


def read_nemo(path: Path) -> list[Entry]:
    entries = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: not a JSON object ({exc.msg} at column {exc.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"{where}: not a JSON object")
            for key in ("audio_filepath", "text", "duration"):
                if key not in row:
                    raise DataError(f"{where}: {key}: missing")
            if not isinstance(row["audio_filepath"], str) or not isinstance(row["text"], str):
                raise DataError(f"{where}: audio_filepath and text must be strings")
            duration = _seconds(row["duration"], where, "duration", positive=True)
            offset = _seconds(row["offset"], where, "offset", positive=False) if "offset" in row else None
            # NeMo names no utterance: its file (and where in it) does
            utt_id = Path(row["audio_filepath"]).with_suffix("").as_posix() + ("" if offset is None else f"@{offset:g}")
            entries.append(Entry(where, utt_id, _audio_path(path.parent, row["audio_filepath"]), row["text"],
                                 str(row.get("speaker", "")), offset, duration))
    return entries


def _kaldi_table(path: Path, required: bool = True) -> dict[str, tuple[str, str]]:
    """A Kaldi table file (`key rest-of-line` per line): key -> (rest, "file:line")."""
    if not path.is_file():
        if required:
            raise DataError(f"{path}: missing (a Kaldi data directory holds wav.scp and text)")
        return {}
    table = {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            key, _, rest = line.strip().partition(" ")
            where = f"{path}:{line_no}"
            if key in table:
                raise DataError(f"{where}: {key}: listed twice (first at line {table[key][1].rsplit(':', 1)[1]})")
            table[key] = (rest.strip(), where)
    return table


def _wav_path(folder: Path, value: str, where: str) -> str:
    if value.endswith("|"):
        raise DataError(f"{where}: a command pipe ({value!r}); no shell is run here: write the audio to files "
                        "(e.g. with sox or ffmpeg) and list their paths in wav.scp")
    if ".ark:" in value or " " in value:
        raise DataError(f"{where}: {value!r} is not one audio file path (archives and extended filenames are not read)")
    return _audio_path(folder, value)


def read_kaldi(folder: Path) -> list[Entry]:
    wavs, texts = _kaldi_table(folder / "wav.scp"), _kaldi_table(folder / "text")
    speakers, segments = _kaldi_table(folder / "utt2spk", required=False), _kaldi_table(folder / "segments", required=False)
    entries = []
    if segments:  # utterances cut out of the recordings wav.scp lists
        for utt_id, (rest, where) in segments.items():
            fields = rest.split()
            if len(fields) != 3:
                raise DataError(f"{where}: expected `utterance recording start end`, got {utt_id} {rest}")
            recording, start, end = fields[0], *fields[1:]
            if recording not in wavs:
                raise DataError(f"{where}: recording {recording!r} is not in {folder / 'wav.scp'}")
            try:
                start_s, end_s = float(start), float(end)
            except ValueError:
                raise DataError(f"{where}: start and end must be seconds, got {start!r} {end!r}") from None
            if not 0 <= start_s < end_s:
                raise DataError(f"{where}: the segment must have 0 <= start < end, got {start_s} {end_s}")
            audio = _wav_path(folder, *wavs[recording])
            entries.append(Entry(where, utt_id, audio, "", "", start_s, end_s - start_s))
    else:
        entries = [Entry(where, utt_id, _wav_path(folder, value, where), "") for utt_id, (value, where) in wavs.items()]
    listed = {e.id for e in entries}
    for utt_id, (_, where) in texts.items():
        if utt_id not in listed:
            raise DataError(f"{where}: utterance {utt_id!r} has no audio in {folder / ('segments' if segments else 'wav.scp')}")
    with_text = []
    for e in entries:
        if e.id not in texts:
            raise DataError(f"{e.where}: utterance {e.id!r} has no line in {folder / 'text'}")
        speaker = speakers.get(e.id, ("", ""))[0]
        transcript, text_where = texts[e.id]
        with_text.append(Entry(e.where, e.id, e.audio, transcript, speaker, e.offset, e.duration, text_where))
    return with_text


TSV_REQUIRED, TSV_OPTIONAL = ("id", "path", "text"), ("duration", "speaker", "offset")


def read_tsv(path: Path) -> list[Entry]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None) or []
        missing = [c for c in TSV_REQUIRED if c not in header]
        unknown = [c for c in header if c not in TSV_REQUIRED + TSV_OPTIONAL]
        if missing or unknown:
            raise DataError(f"{path}:1: the header needs columns {list(TSV_REQUIRED)} and may have "
                            f"{list(TSV_OPTIONAL)}; got {header}")
        entries = []
        for line_no, row in enumerate(reader, start=2):
            where = f"{path}:{line_no}"
            if not any(row):
                continue
            if len(row) != len(header):
                raise DataError(f"{where}: expected {len(header)} tab-separated columns, got {len(row)}")
            cell = dict(zip(header, row))
            numbers = {}
            for name in ("duration", "offset"):
                if cell.get(name, "") != "":
                    try:
                        numbers[name] = _seconds(float(cell[name]), where, name, positive=name == "duration")
                    except ValueError:
                        raise DataError(f"{where}: {name} must be seconds, got {cell[name]!r}") from None
            entries.append(Entry(where, cell["id"], _audio_path(path.parent, cell["path"]), cell["text"],
                                 cell.get("speaker", ""), numbers.get("offset"), numbers.get("duration")))
    return entries
