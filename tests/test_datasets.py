"""LibriSpeech and FSDD listing: tiny real-audio trees in tmp_path, every error case, and the real FSDD copy."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import soundfile

from study.data.audio import SAMPLE_RATE, load_audio
from study.data.fsdd import load_fsdd
from study.data.librispeech import load_librispeech
from study.data.manifest import DataError

REAL_FSDD = Path(__file__).resolve().parents[2] / "shared" / "data" / "fsdd" / "recordings"


def _write_tone(path: Path, seconds: float, rate: int = 16_000) -> None:
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.01 * np.random.default_rng(0).standard_normal(t.size)
    soundfile.write(str(path), wave.astype(np.float32), rate)


# ---------------------------------------------------------------- LibriSpeech

def _chapter(subset_dir: Path, speaker: str, chapter: str, utts: dict[str, tuple[str, float]]) -> Path:
    """utts: utterance number -> (transcript, seconds); writes the flacs and the .trans.txt."""
    folder = subset_dir / speaker / chapter
    folder.mkdir(parents=True)
    lines = []
    for num, (text, seconds) in utts.items():
        utt_id = f"{speaker}-{chapter}-{num}"
        _write_tone(folder / f"{utt_id}.flac", seconds)
        lines.append(f"{utt_id} {text}")
    (folder / f"{speaker}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture
def libri(tmp_path: Path) -> Path:
    root = tmp_path / "LibriSpeech"
    _chapter(root / "train-a", "19", "198", {"0001": ("HELLO WORLD", 0.5), "0000": ("IT'S 2 O'CLOCK", 0.25)})
    _chapter(root / "train-a", "103", "1240", {"0000": ("A CAT, A DOG.", 0.75)})
    _chapter(root / "train-b", "1001", "7", {"0003": ("THE END", 1.0)})
    return root


def test_librispeech_joins_subsets_sorted_and_normalised(libri: Path) -> None:
    utts = load_librispeech(libri, ["train-b", "train-a"])
    assert [u.id for u in utts] == ["1001-7-0003", "103-1240-0000", "19-198-0000", "19-198-0001"]
    by_id = {u.id: u for u in utts}
    assert by_id["19-198-0000"].text == "it's two o'clock"
    assert by_id["103-1240-0000"].text == "a cat a dog"
    assert [u.speaker for u in utts] == ["1001", "103", "19", "19"]
    assert by_id["19-198-0001"].duration == pytest.approx(0.5)
    assert by_id["1001-7-0003"].duration == pytest.approx(1.0)
    assert all(Path(u.path).is_absolute() and Path(u.path).is_file() for u in utts)
    assert len(load_librispeech(libri, ["train-a"])) == 3


def test_librispeech_listing_is_cached_per_chapter_and_rechecked_when_one_changes(libri: Path, tmp_path: Path,
                                                                                  monkeypatch) -> None:
    from study.data import librispeech
    cache = tmp_path / "cache"
    first = load_librispeech(libri, ["train-a", "train-b"], cache)
    assert len(list((cache / "manifests").glob("librispeech-*.json"))) == 2

    def no_header_reads(path):
        raise AssertionError(f"{path}: header read although its chapter is cached")
    monkeypatch.setattr(librispeech, "audio_duration", no_header_reads)
    assert load_librispeech(libri, ["train-a", "train-b"], cache) == first  # from the cache alone

    monkeypatch.undo()
    (libri / "train-a" / "103" / "1240" / "103-1240-0000.flac").unlink()  # the chapter changed: checked again
    with pytest.raises(DataError, match="103-1240-0000.flac: audio file named in .* not found"):
        load_librispeech(libri, ["train-a"], cache)


def test_librispeech_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "nope"))):
        load_librispeech(tmp_path / "nope", ["train-a"])


def test_librispeech_missing_subset(libri: Path) -> None:
    with pytest.raises(DataError, match=re.escape(str(libri / "train-c"))):
        load_librispeech(libri, ["train-a", "train-c"])


def test_librispeech_empty_subset(libri: Path) -> None:
    (libri / "dev-empty" / "5" / "6").mkdir(parents=True)
    with pytest.raises(DataError, match="empty split") as err:
        load_librispeech(libri, ["dev-empty"])
    assert str(libri / "dev-empty") in str(err.value)


def test_librispeech_transcript_line_without_audio(libri: Path) -> None:
    folder = libri / "train-a" / "19" / "198"
    with open(folder / "19-198.trans.txt", "a") as f:
        f.write("19-198-0002 MISSING AUDIO\n")
    with pytest.raises(DataError) as err:
        load_librispeech(libri, ["train-a"])
    assert str(folder / "19-198-0002.flac") in str(err.value)


def test_librispeech_audio_without_transcript_line(libri: Path) -> None:
    folder = libri / "train-a" / "19" / "198"
    _write_tone(folder / "19-198-0009.flac", 0.1)
    with pytest.raises(DataError) as err:
        load_librispeech(libri, ["train-a"])
    assert str(folder / "19-198-0009.flac") in str(err.value)


@pytest.mark.parametrize("line", ["19-198-0005", "bogus line here", "20-198-0005 WRONG SPEAKER", "19-198-0005 ..."])
def test_librispeech_malformed_transcript_line(libri: Path, line: str) -> None:
    trans = libri / "train-a" / "19" / "198" / "19-198.trans.txt"
    with open(trans, "a") as f:
        f.write(line + "\n")
    with pytest.raises(DataError, match="malformed") as err:
        load_librispeech(libri, ["train-a"])
    assert f"{trans}:3" in str(err.value)


def test_librispeech_missing_transcript_file(libri: Path) -> None:
    trans = libri / "train-b" / "1001" / "7" / "1001-7.trans.txt"
    trans.unlink()
    with pytest.raises(DataError) as err:
        load_librispeech(libri, ["train-b"])
    assert str(trans) in str(err.value)


def test_librispeech_corrupt_flac(libri: Path) -> None:
    bad = libri / "train-a" / "103" / "1240" / "103-1240-0000.flac"
    bad.write_bytes(b"this is not a flac file" * 10)
    with pytest.raises(DataError) as err:
        load_librispeech(libri, ["train-a"])
    assert str(bad) in str(err.value)


# ---------------------------------------------------------------- FSDD

@pytest.fixture
def fsdd(tmp_path: Path) -> Path:
    root = tmp_path / "recordings"
    root.mkdir()
    for speaker in ("ann", "bob", "cid"):
        for digit in (3, 7):
            for index in range(12):
                _write_tone(root / f"{digit}_{speaker}_{index}.wav", 0.05, rate=8_000)
    return root


def test_fsdd_split_by_index(fsdd: Path) -> None:
    splits = load_fsdd(fsdd)
    assert {k: len(v) for k, v in splits.items()} == {"train": 12, "dev": 30, "test": 30}
    assert all(int(u.id.split("_")[2]) < 5 for u in splits["test"])
    assert all(5 <= int(u.id.split("_")[2]) < 10 for u in splits["dev"])
    u = next(u for u in splits["train"] if u.id == "7_bob_11")
    assert (u.text, u.speaker, u.duration) == ("seven", "bob", pytest.approx(0.05))
    assert Path(u.path) == fsdd / "7_bob_11.wav"
    custom = load_fsdd(fsdd, dev_indices=[0], test_indices=[1, 2])
    assert {k: len(v) for k, v in custom.items()} == {"train": 54, "dev": 6, "test": 12}


def test_fsdd_split_by_speaker(fsdd: Path) -> None:
    splits = load_fsdd(fsdd, split_by="speaker", dev_speakers=["bob"], test_speakers=["cid"])
    assert {k: {u.speaker for u in v} for k, v in splits.items()} == {"train": {"ann"}, "dev": {"bob"}, "test": {"cid"}}
    assert all(len(v) == 24 for v in splits.values())


def test_fsdd_unknown_speaker(fsdd: Path) -> None:
    with pytest.raises(DataError, match="'theo'") as err:
        load_fsdd(fsdd, split_by="speaker", dev_speakers=["bob"], test_speakers=["theo"])
    assert str(fsdd) in str(err.value) and "'ann', 'bob', 'cid'" in str(err.value)


def test_fsdd_empty_split(fsdd: Path) -> None:
    with pytest.raises(DataError, match="'train'") as err:
        load_fsdd(fsdd, split_by="speaker", dev_speakers=["ann"], test_speakers=["bob", "cid"])
    assert str(fsdd) in str(err.value)
    with pytest.raises(DataError, match="'dev'"):
        load_fsdd(fsdd, dev_indices=[40])


def test_fsdd_bad_file_name(fsdd: Path) -> None:
    (fsdd / "three_ann_1.wav").write_bytes(b"")
    with pytest.raises(DataError) as err:
        load_fsdd(fsdd)
    assert str(fsdd / "three_ann_1.wav") in str(err.value)


def test_fsdd_missing_root_and_corrupt_wav(tmp_path: Path, fsdd: Path) -> None:
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "absent"))):
        load_fsdd(tmp_path / "absent")
    (fsdd / "3_ann_5.wav").write_bytes(b"RIFF garbage" * 8)
    with pytest.raises(DataError) as err:
        load_fsdd(fsdd)
    assert str(fsdd / "3_ann_5.wav") in str(err.value)


def test_fsdd_rejects_bad_arguments(fsdd: Path) -> None:
    with pytest.raises(ValueError, match="split_by"):
        load_fsdd(fsdd, split_by="digit")
    with pytest.raises(ValueError, match="overlap"):
        load_fsdd(fsdd, dev_indices=[1, 2], test_indices=[2, 3])


@pytest.mark.skipif(not REAL_FSDD.is_dir(), reason=f"real FSDD recordings not present at {REAL_FSDD}")
def test_fsdd_real_recordings() -> None:
    splits = load_fsdd(REAL_FSDD)
    everything = [u for v in splits.values() for u in v]
    assert len(everything) == 3000
    speakers = {u.speaker for u in everything}
    assert len(speakers) >= 6
    ids = [set(u.id for u in splits[k]) for k in ("train", "dev", "test")]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    # Index split keeps every speaker everywhere; speaker split must keep them apart.
    by_speaker = load_fsdd(REAL_FSDD, split_by="speaker")
    spk = {k: {u.speaker for u in v} for k, v in by_speaker.items()}
    assert spk["test"] == {"theo"} and spk["dev"] == {"nicolas"} and not spk["train"] & {"theo", "nicolas"}

    u = splits["test"][0]
    wave = load_audio(u.path)
    assert wave.dtype.is_floating_point and wave.dim() == 1
    assert wave.numel() == pytest.approx(u.duration * SAMPLE_RATE, abs=SAMPLE_RATE * 0.01)
    assert 0.1 < wave.numel() / SAMPLE_RATE < 3.0 and float(wave.abs().max()) <= 1.0


def test_extra_test_sets_are_librispeech_only(libri: Path) -> None:
    from study.config import DataConfig
    from study.data.splits import load_extra_tests
    with pytest.raises(DataError, match="data.extra_test_subsets"):
        load_extra_tests(DataConfig(source="fsdd", extra_test_subsets=["test-other"]))
    extra = load_extra_tests(DataConfig(source="librispeech", root=str(libri), extra_test_subsets=["train-b"]))
    assert [u.text for u in extra["train-b"]] == ["the end"]


@pytest.mark.slow
def test_a_trial_on_8khz_recordings_laid_out_like_fsdd(tiny_config, tracking_uri, tmp_path) -> None:
    """FSDD's layout and format (8 kHz WAV, <digit>_<speaker>_<index>.wav) made from the synthetic corpus's
    audio, so it runs where the real recordings are absent: read, resampled to 16 kHz, trained, evaluated."""
    import mlflow

    from study.data.audio import resample
    from study.data.splits import load_splits
    from study.trial import run_trial
    synthetic = [u for split in load_splits(tiny_config.data).values() for u in split]
    root = tmp_path / "recordings"
    root.mkdir()
    for i, utterance in enumerate(synthetic[:30]):  # 3 speakers x 10 indices: 0-4 test, 5-9 dev below
        wave = resample(load_audio(utterance.path), SAMPLE_RATE, 8_000)
        soundfile.write(root / f"{i % 3 + 3}_{('ann', 'bob', 'cid')[i % 3]}_{i // 3}.wav", wave.numpy(), 8_000)
    tiny_config.data.source, tiny_config.data.root = "fsdd", str(root)
    tiny_config.data.fsdd.dev_indices, tiny_config.data.fsdd.test_indices = [8, 9], [6, 7]
    tiny_config.train.epochs = 1
    result = run_trial(tiny_config, tracking_uri, runs_dir=tmp_path / "runs")
    run = mlflow.MlflowClient(tracking_uri).get_run(result.run_id)
    assert run.info.status == "FINISHED" and 0.0 <= result.metrics["test/wer"]
    splits = load_fsdd(root, dev_indices=[8, 9], test_indices=[6, 7])
    assert [len(splits[k]) for k in ("train", "dev", "test")] == [18, 6, 6]
    first = splits["test"][0]
    assert load_audio(first.path).numel() == pytest.approx(first.duration * SAMPLE_RATE, abs=SAMPLE_RATE * 0.01)
