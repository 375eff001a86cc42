"""Free Spoken Digit Dataset: one flat folder of `{digit}_{speaker}_{index}.wav` (8 kHz mono).

Only lists and validates files; resampling to 16 kHz happens in study.data.audio.load_audio.
Two splits are offered: by recording index (the FSDD convention, every speaker in every split)
and by held-out speaker (tests generalisation to unseen voices).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from study.data.audio import audio_duration
from study.data.manifest import DataError, Utterance
from study.data.text import DIGIT_WORDS

SPLITS = ("train", "dev", "test")
_NAME = re.compile(r"^([0-9])_([A-Za-z0-9]+)_([0-9]+)\.wav$")

DEFAULT_TEST_INDICES = list(range(0, 5))  # the FSDD README's test convention
DEFAULT_DEV_INDICES = list(range(5, 10))
DEFAULT_TEST_SPEAKERS = ["theo"]
DEFAULT_DEV_SPEAKERS = ["nicolas"]


def load_fsdd(
    root: str | Path,
    split_by: str = "index",
    dev_indices: list[int] | None = None,
    test_indices: list[int] | None = None,
    dev_speakers: list[str] | None = None,
    test_speakers: list[str] | None = None,
) -> dict[str, list[Utterance]]:
    """Returns {"train", "dev", "test"} -> utterances sorted by id; None arguments take the defaults above.

    split_by="index": test/dev hold the recordings with those indices, train the rest.
    split_by="speaker": test/dev hold those speakers' recordings, train the other speakers.
    """
    root = Path(root).absolute()
    if not root.is_dir():
        raise DataError(f"{root}: FSDD recordings folder not found")
    if split_by not in ("index", "speaker"):
        raise ValueError(f"split_by must be 'index' or 'speaker', got {split_by!r}")

    parsed = _list_recordings(root)
    if split_by == "index":
        dev_set = set(DEFAULT_DEV_INDICES if dev_indices is None else dev_indices)
        test_set = set(DEFAULT_TEST_INDICES if test_indices is None else test_indices)
        key = 2  # position of the index in the parsed tuple
    else:
        dev_set = set(DEFAULT_DEV_SPEAKERS if dev_speakers is None else dev_speakers)
        test_set = set(DEFAULT_TEST_SPEAKERS if test_speakers is None else test_speakers)
        key = 1
        found = sorted({speaker for _, speaker, _ in parsed.values()})
        for speaker in sorted(dev_set | test_set):
            if speaker not in found:
                raise DataError(f"{root}: speaker {speaker!r} not found; speakers found: {found}")
    overlap = dev_set & test_set
    if overlap:
        raise ValueError(f"dev and test {split_by} sets overlap in {sorted(overlap)}")

    splits: dict[str, list[Utterance]] = {name: [] for name in SPLITS}
    for path, (digit, speaker, index) in sorted(parsed.items()):
        value = (digit, speaker, index)[key]
        split = "test" if value in test_set else "dev" if value in dev_set else "train"
        # Duration from the header only; a corrupt wav raises DataError naming the file.
        splits[split].append(Utterance(path.stem, str(path), audio_duration(path), DIGIT_WORDS[digit], speaker))
    for name in SPLITS:
        if not splits[name]:
            raise DataError(f"{root}: FSDD split {name!r} is empty (split_by={split_by!r})")
    return splits


def _list_recordings(root: Path) -> dict[Path, tuple[int, str, int]]:
    """Maps each recording to (digit, speaker, index); any other visible file is an error, not skipped."""
    parsed: dict[Path, tuple[int, str, int]] = {}
    with os.scandir(root) as it:
        for entry in it:
            if entry.name.startswith(".") or not entry.is_file():
                continue  # hidden files (.DS_Store) and sub-folders are not recordings
            match = _NAME.match(entry.name)
            if match is None:
                raise DataError(f"{root / entry.name}: file name does not match '{{digit}}_{{speaker}}_{{index}}.wav'")
            parsed[root / entry.name] = (int(match.group(1)), match.group(2), int(match.group(3)))
    if not parsed:
        raise DataError(f"{root}: FSDD folder holds no recordings")
    return parsed
