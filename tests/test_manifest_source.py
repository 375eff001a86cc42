"""data.source = "manifest": NeMo JSON lines, Kaldi data directories and TSV manifests over real audio
files (the synthetic corpus's recordings, copied, cut and resampled), and every bad input refused before
training with the manifest line at fault."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

import sweep

from study.config import FeatureConfig, ManifestConfig
from study.data.audio import load_audio
from study.data.features import compute_features
from study.data.manifest import DataError
from study.data.manifest_source import load_manifest_splits
from study.data.splits import load_splits
from tests.helpers import ROOT


@pytest.fixture
def corpus(tiny_config, tmp_path) -> dict[str, list]:
    """The tiny synthetic corpus's splits, their audio copied under tmp_path/corpus/audio/."""
    splits = load_splits(tiny_config.data)
    audio = tmp_path / "corpus" / "audio"
    audio.mkdir(parents=True)
    for utts in splits.values():
        for u in utts:
            shutil.copy(u.path, audio / Path(u.path).name)
    return splits


def write_nemo(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def nemo_rows(utts) -> list[dict]:
    return [{"audio_filepath": f"audio/{Path(u.path).name}", "duration": u.duration, "text": u.text.upper(),
             "speaker": u.speaker} for u in utts]


def write_kaldi(folder: Path, utts, audio_prefix: str = "../../audio/") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "wav.scp").write_text("".join(f"{u.id} {audio_prefix}{Path(u.path).name}\n" for u in utts))
    (folder / "text").write_text("".join(f"{u.id} {u.text}\n" for u in utts))
    (folder / "utt2spk").write_text("".join(f"{u.id} {u.speaker}\n" for u in utts))
    return folder


def write_tsv(path: Path, utts) -> Path:
    path.write_text("id\tpath\ttext\tspeaker\n" + "".join(
        f"{u.id}\taudio/{Path(u.path).name}\t{u.text}\t{u.speaker}\n" for u in utts))
    return path


def nemo_config(root: Path, corpus, **settings) -> ManifestConfig:
    paths = {name: str(write_nemo(root / f"{name}.json", nemo_rows(utts))) for name, utts in corpus.items()}
    return ManifestConfig(**paths, **settings)


def test_the_three_formats_list_the_same_utterances(corpus, tmp_path):
    root = tmp_path / "corpus"
    nemo = load_manifest_splits(nemo_config(root, corpus))
    kaldi = load_manifest_splits(ManifestConfig(**{n: str(write_kaldi(root / "kaldi" / n, u)) for n, u in corpus.items()}))
    tsv = load_manifest_splits(ManifestConfig(**{n: str(write_tsv(root / f"{n}.tsv", u)) for n, u in corpus.items()}))
    for name, utts in corpus.items():
        expected = [(str(root / "audio" / Path(u.path).name), u.text, u.speaker) for u in utts]
        for listed in (nemo[name], kaldi[name], tsv[name]):
            assert [(u.path, u.text, u.speaker) for u in listed] == expected  # relative paths, manifest order
            assert [u.duration for u in listed] == pytest.approx([u.duration for u in utts], abs=1e-4)  # the TSV rounds
            assert all(u.offset is None for u in listed)  # whole files: the same feature cache keys as before
        assert [u.id for u in kaldi[name]] == [u.id for u in tsv[name]] == [u.id for u in utts]
        assert nemo[name][0].id == f"audio/{Path(utts[0].path).stem}"  # NeMo names files, not utterances


def test_segments_and_offsets_cut_utterances_out_of_a_recording_at_another_rate(corpus, tmp_path):
    """Two utterances joined into one 8 kHz recording; a Kaldi segment and a NeMo offset cut the second one
    back out: its samples are the 8 kHz recording's, resampled to 16 kHz once."""
    first, second = corpus["train"][:2]
    waves = [soundfile.read(u.path, dtype="float32")[0] for u in (first, second)]
    rate = 8000
    recording = tmp_path / "corpus" / "audio" / "joined.wav"
    soundfile.write(recording, np.concatenate([w[::2] for w in waves]), rate, subtype="FLOAT")
    start, length = len(waves[0][::2]) / rate, len(waves[1][::2]) / rate
    kaldi = tmp_path / "corpus" / "joined"
    kaldi.mkdir()
    (kaldi / "wav.scp").write_text("rec1 ../audio/joined.wav\n")
    (kaldi / "segments").write_text(f"utt-a rec1 0 {start}\nutt-b rec1 {start} {start + length}\n")
    (kaldi / "text").write_text(f"utt-a {first.text}\nutt-b {second.text}\n")
    nemo = write_nemo(tmp_path / "corpus" / "joined.json", [
        {"audio_filepath": "audio/joined.wav", "offset": start, "duration": length, "text": second.text}])

    from study.data.manifest_formats import read_entries
    from study.data.manifest_source import to_utterance
    cut_kaldi = [to_utterance(e) for e in read_entries(kaldi)]
    cut_nemo = to_utterance(read_entries(nemo)[0])
    assert [(u.id, u.offset, u.text) for u in cut_kaldi] == [("utt-a", 0.0, first.text), ("utt-b", start, second.text)]
    assert (cut_nemo.offset, cut_nemo.duration) == pytest.approx((start, length))
    expected = load_audio(recording)[round(start * 16000):]  # the whole recording at 16 kHz, from the cut
    features = compute_features([cut_kaldi[1], cut_nemo], FeatureConfig(), tmp_path / "features")
    got = load_audio(recording, segment=(start, length))
    assert got.shape[0] == pytest.approx(len(waves[1]), abs=2)  # 16 kHz samples of the second utterance
    torch.testing.assert_close(got, expected[:got.shape[0]], atol=0.02, rtol=0)  # edges resample differently
    assert torch.equal(features[0], features[1])  # the two formats' cuts are the same audio
    assert features[0].shape[0] == pytest.approx(length * 100, abs=2)  # 10 ms frames at the model's rate


@pytest.mark.parametrize("line, message", [
    ('{"audio_filepath": "audio/two.wav", "duration": 0.5, "text": "fine"', r"bad\.json:2: not a JSON object"),
    ('{"audio_filepath": "audio/gone.wav", "duration": 0.5, "text": "fine"}', r"bad\.json:2: .*gone\.wav: audio file not found"),
    ('{"audio_filepath": "audio/two.wav", "duration": 0.5, "text": " ?! "}', r"bad\.json:2: text: empty after normalisation"),
    ('{"audio_filepath": "audio/two.wav", "duration": -1, "text": "fine"}', r"bad\.json:2: duration must be a number > 0"),
    ('{"audio_filepath": "audio/two.wav", "text": "fine"}', r"bad\.json:2: duration: missing"),
    ('{"audio_filepath": "audio/ok.wav", "duration": 0.5, "text": "fine"}', r"bad\.json:2: utterance id 'audio/ok' listed twice \(first at .*bad\.json:1\)"),
    ('{"audio_filepath": "audio/empty.wav", "duration": 0.5, "text": "fine"}', r"bad\.json:2: .*empty\.wav: audio file holds no samples"),
    ('{"audio_filepath": "audio/junk.wav", "duration": 0.5, "text": "fine"}', r"bad\.json:2: .*junk\.wav: cannot read audio"),
    ('{"audio_filepath": "audio/two.wav", "offset": 0.4, "duration": 0.5, "text": "fine"}', r"bad\.json:2: the segment 0\.4 s \+ 0\.5 s runs past the end"),
])
def test_a_bad_nemo_line_is_refused_naming_the_line_and_field(tmp_path, line, message):
    audio = tmp_path / "audio"
    audio.mkdir()
    for name in ("ok.wav", "two.wav"):
        soundfile.write(audio / name, np.zeros(8000, np.float32), 16000)  # 0.5 s
    soundfile.write(audio / "empty.wav", np.zeros(0, np.float32), 16000)
    (audio / "junk.wav").write_bytes(b"not a RIFF header at all")
    manifest = tmp_path / "bad.json"
    manifest.write_text(json.dumps({"audio_filepath": "audio/ok.wav", "duration": 0.5, "text": "fine"}) + "\n" + line + "\n")
    cfg = ManifestConfig(train=str(manifest), dev=str(manifest), test=str(manifest))
    with pytest.raises(DataError, match=message):
        load_manifest_splits(cfg)


def test_bad_kaldi_directories_and_tsv_files_are_refused_naming_the_line(corpus, tmp_path):
    utts = corpus["train"][:3]
    kaldi = write_kaldi(tmp_path / "corpus" / "k", utts)
    (kaldi / "wav.scp").write_text(f"{utts[0].id} sox {utts[0].path} -t wav - |\n" + "".join(
        f"{u.id} {u.path}\n" for u in utts[1:]))
    cfg = ManifestConfig(train=str(kaldi), dev=str(kaldi), test=str(kaldi))
    with pytest.raises(DataError, match=r"wav\.scp:1: a command pipe .*no shell is run"):
        load_manifest_splits(cfg)
    write_kaldi(kaldi, utts)
    (kaldi / "text").write_text("".join(f"{u.id} {u.text}\n" for u in utts[:2]))
    with pytest.raises(DataError, match=rf"wav\.scp:3: utterance '{utts[2].id}' has no line in .*text"):
        load_manifest_splits(cfg)
    with pytest.raises(DataError, match=r"needs a manifest per split: set data\.manifest\.dev, data\.manifest\.test"):
        load_manifest_splits(ManifestConfig(train=str(kaldi)))
    empty = tmp_path / "corpus" / "empty.tsv"
    empty.write_text("id\tpath\ttext\n")
    with pytest.raises(DataError, match=r"empty\.tsv: the train manifest lists no utterances"):
        load_manifest_splits(ManifestConfig(train=str(empty), dev=str(empty), test=str(empty)))
    (tmp_path / "corpus" / "bad.tsv").write_text("id\tpath\ttext\tduration\nu1\taudio/x.flac\thi\tlong\n")
    with pytest.raises(DataError, match=r"bad\.tsv:2: duration must be seconds, got 'long'"):
        load_manifest_splits(ManifestConfig(**dict.fromkeys(("train", "dev", "test"), str(tmp_path / "corpus" / "bad.tsv"))))


def test_characters_the_units_cannot_write_and_shared_speakers_are_reported(corpus, tmp_path, capsys):
    root = tmp_path / "corpus"
    rows = nemo_rows(corpus["train"])
    rows[1]["text"] = "Café au lait, déjà vu"
    paths = {name: write_nemo(root / f"{name}.json", nemo_rows(utts)) for name, utts in corpus.items()}
    write_nemo(paths["train"], rows)
    cfg = ManifestConfig(**{name: str(path) for name, path in paths.items()})
    splits = load_manifest_splits(cfg)
    assert splits["train"][1].text == "caf au lait d j vu"
    err = capsys.readouterr().err
    assert "train transcripts hold 4 characters the output units cannot write" in err
    assert f"'é' x2 (e.g. {paths['train']}:2)" in err and "'à' x1" in err and "',' x1" in err
    assert "train and dev splits share" not in err  # the synthetic corpus's voices are disjoint per split
    dev = nemo_rows(corpus["dev"])
    dev[0]["speaker"] = corpus["train"][0].speaker
    write_nemo(paths["dev"], dev)
    load_manifest_splits(cfg)
    assert f"the train and dev splits share 1 speaker(s), e.g. ['{corpus['train'][0].speaker}']" in capsys.readouterr().err
    with pytest.raises(DataError, match="data.manifest.speaker_disjoint: the train and dev splits share 1 speaker"):
        load_manifest_splits(ManifestConfig(**{name: str(path) for name, path in paths.items()}, speaker_disjoint=True))


def test_audio_broken_after_listing_is_named_when_its_features_are_computed(corpus, tmp_path, monkeypatch):
    """Listed while readable, then overwritten: the feature cache (in shards here) names the file, before
    any model exists, and leaves no cache that looks complete."""
    from study.data import feature_cache
    splits = load_manifest_splits(nemo_config(tmp_path / "corpus", corpus))
    victim = Path(splits["train"][17].path)
    victim.write_bytes(b"no longer audio")
    monkeypatch.setattr(feature_cache, "SHARD_UTTERANCES", 10)  # 24 utterances: 3 shards
    with pytest.raises(DataError, match=rf"{victim}: cannot read audio"):
        compute_features(splits["train"], FeatureConfig(), tmp_path / "features")
    assert not list((tmp_path / "features").glob("*/index.json"))


def test_the_sweep_exits_2_naming_the_manifest_line_before_any_trial(tmp_path, monkeypatch, capsys):
    bad = tmp_path / "train.jsonl"
    bad.write_text('{"audio_filepath": "gone.wav", "duration": 1.0, "text": "hello"}\n')
    monkeypatch.chdir(tmp_path)
    code = sweep.main([str(ROOT / "experiments" / "manifest.toml"), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}",
                       "--no-analysis", *(f"--set=data.manifest.{split}={bad}" for split in ("train", "dev", "test"))])
    assert code == 2
    assert f"{bad}:1: {tmp_path / 'gone.wav'}: audio file not found" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "trials").exists()  # no trial started
