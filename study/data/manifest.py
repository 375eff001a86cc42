"""One utterance of any corpus, and the TSV manifest every corpus is written to and read from."""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

MANIFEST_COLUMNS = ("id", "path", "duration", "text", "speaker")


class DataError(ValueError):
    """A data set problem (missing root, empty split, bad audio, bad transcript); names the path."""


@dataclass(frozen=True)
class Utterance:
    id: str
    path: str  # absolute path to a 16 kHz (or resampled on load) audio file
    duration: float  # seconds
    text: str  # normalised transcript (see study.data.text.normalize)
    speaker: str  # speaker or voice name; splits are disjoint in it where the corpus says so
    offset: float | None = None  # seconds into `path` where the utterance starts; None: the whole file


def segment(u: Utterance, speed: float = 1.0) -> tuple[float, float] | None:
    """(start, length) in seconds of the audio an utterance reads (a copy at `speed` reads its original's);
    None: the whole file."""
    return None if u.offset is None else (u.offset, u.duration * speed)


def write_manifest(path: Path, utterances: list[Utterance]) -> None:
    """Write atomically, so a crash never leaves a half manifest that looks complete."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(MANIFEST_COLUMNS)
        for u in utterances:
            writer.writerow([u.id, u.path, f"{u.duration:.4f}", u.text, u.speaker])
    tmp.replace(path)


def read_manifest(path: Path) -> list[Utterance]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: manifest not found")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        if header is None or tuple(header) != MANIFEST_COLUMNS:
            raise DataError(f"{path}: manifest header must be {list(MANIFEST_COLUMNS)}, got {header!r}")
        rows = []
        for line_no, row in enumerate(reader, start=2):
            if len(row) != len(MANIFEST_COLUMNS):
                raise DataError(f"{path}:{line_no}: expected {len(MANIFEST_COLUMNS)} columns, got {len(row)}")
            rows.append(Utterance(row[0], row[1], float(row[2]), row[3], row[4]))
    return rows
