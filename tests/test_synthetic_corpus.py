"""The synthetic eSpeak corpus: determinism, caching, voices, transcripts and audio (tiny configs)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import soundfile

from study.config.synthetic import SPLITS, SyntheticConfig
from study.data import espeak, synthetic
from study.data.audio import SAMPLE_RATE
from study.data.manifest import Utterance
from study.data.sentences import VOCABULARY, generate_sentences
from study.data.synthetic import COMPLETE_MARKER, build_synthetic_corpus
from study.data.text import normalize

Corpus = dict[str, list[Utterance]]

TINY = SyntheticConfig(train_utterances=6, dev_utterances=3, test_utterances=3)


def _corpus_dir(root: Path, cfg: SyntheticConfig = TINY) -> Path:
    return root / f"synthetic-{synthetic.config_hash(cfg)}"


# Its module-scoped fixtures are built once only if its tests share one xdist worker
pytestmark = pytest.mark.xdist_group("synthetic_corpus")


@pytest.fixture(scope="module")
def root_a(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cache-a")
    build_synthetic_corpus(TINY, root, workers=2)
    return root


@pytest.fixture(scope="module")
def corpus_a(root_a: Path) -> Corpus:
    return build_synthetic_corpus(TINY, root_a, workers=2)


@pytest.fixture(scope="module")
def corpus_b(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    # Another root and another worker count: the output must not depend on either.
    return build_synthetic_corpus(TINY, tmp_path_factory.mktemp("cache-b"), workers=1)


def _samples(path: str) -> np.ndarray:
    data, rate = soundfile.read(path, dtype="int16")
    assert rate == SAMPLE_RATE
    return data


def test_build_is_deterministic_across_roots_and_worker_counts(corpus_a: Corpus, corpus_b: Corpus) -> None:
    assert set(corpus_a) == set(corpus_b) == set(SPLITS)
    for split in SPLITS:
        a, b = corpus_a[split], corpus_b[split]
        assert len(a) == len(b) == getattr(TINY, f"{split}_utterances")
        for ua, ub in zip(a, b):
            assert (ua.id, ua.text, ua.speaker, ua.duration) == (ub.id, ub.text, ub.speaker, ub.duration)
            assert ua.path != ub.path
            np.testing.assert_array_equal(_samples(ua.path), _samples(ub.path))


def test_second_build_reuses_the_cache(root_a: Path, corpus_a: Corpus, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _corpus_dir(root_a)
    watched = [folder / "train.tsv", folder / "config.json", Path(corpus_a["train"][0].path)]
    mtimes = [p.stat().st_mtime_ns for p in watched]

    def no_generation(*args: object, **kwargs: object) -> None:
        raise AssertionError("the corpus was regenerated although the cache is complete")

    monkeypatch.setattr(synthetic, "_generate", no_generation)
    monkeypatch.setattr(espeak, "synthesize", no_generation)
    again = build_synthetic_corpus(TINY, root_a, workers=2)
    assert again == corpus_a
    assert [p.stat().st_mtime_ns for p in watched] == mtimes


def test_cache_folder_layout(root_a: Path, corpus_a: Corpus) -> None:
    folder = _corpus_dir(root_a)
    assert (folder / COMPLETE_MARKER).is_file()
    for name in ("train.tsv", "dev.tsv", "test.tsv", "config.json"):
        assert (folder / name).is_file()
    for split in SPLITS:
        for u in corpus_a[split]:
            assert Path(u.path) == folder / "audio" / split / f"{u.id}.flac"
    assert not [p for p in root_a.iterdir() if ".partial-" in p.name]  # no partial folder left behind


def test_different_config_gives_a_different_folder(root_a: Path) -> None:
    other = dataclasses.replace(TINY, seed=1, train_utterances=2, dev_utterances=1, test_utterances=1)
    assert synthetic.config_hash(other) != synthetic.config_hash(TINY)
    corpus = build_synthetic_corpus(other, root_a, workers=2)
    assert _corpus_dir(root_a, other) != _corpus_dir(root_a)
    assert (_corpus_dir(root_a, other) / COMPLETE_MARKER).is_file()
    assert (_corpus_dir(root_a) / COMPLETE_MARKER).is_file()
    assert Path(corpus["train"][0].path).is_relative_to(_corpus_dir(root_a, other))


def test_splits_use_disjoint_voice_variants(corpus_a: Corpus) -> None:
    variants = {split: {u.speaker.split("+", 1)[1] for u in corpus_a[split]} for split in SPLITS}
    for split in SPLITS:
        assert variants[split] <= set(getattr(TINY, f"{split}_variants"))
        assert all(u.speaker.split("+", 1)[0] in TINY.accents for u in corpus_a[split])
    assert not variants["train"] & variants["dev"]
    assert not variants["train"] & variants["test"]
    assert not variants["dev"] & variants["test"]


def test_default_config_is_valid_and_its_voice_lists_disjoint() -> None:
    cfg = SyntheticConfig()
    cfg.validate()
    train, dev, test = set(cfg.train_variants), set(cfg.dev_variants), set(cfg.test_variants)
    assert not (train & dev or train & test or dev & test)
    assert 4 <= len(dev) <= 6 and 4 <= len(test) <= 6
    assert {"f1", "m4"} <= test and {"f4", "m2"} <= dev  # both sexes held out
    assert not (train | dev | test) & espeak.NONDETERMINISTIC_VARIANTS
    assert sorted(cfg.accents) == sorted(espeak.ENGLISH_ACCENTS)


def test_transcripts_are_normalised_vocabulary_sentences(corpus_a: Corpus) -> None:
    assert len(VOCABULARY) >= 200
    assert list(VOCABULARY) == sorted(set(VOCABULARY))
    vocabulary = set(VOCABULARY)
    for split in SPLITS:
        for u in corpus_a[split]:
            words = u.text.split()
            assert normalize(u.text) == u.text
            assert TINY.min_words <= len(words) <= TINY.max_words
            assert set(words) <= vocabulary


def test_generated_sentences_cover_the_vocabulary_and_vary() -> None:
    sentences = generate_sentences(3000, np.random.default_rng(123), 3, 12)
    vocabulary = set(VOCABULARY)
    used: set[str] = set()
    for s in sentences:
        words = s.split()
        assert normalize(s) == s and 3 <= len(words) <= 12 and set(words) <= vocabulary
        used.update(words)
    assert len(used) >= 0.9 * len(VOCABULARY)
    assert len(set(sentences)) >= 0.6 * len(sentences)  # no small set of memorisable sentences
    assert generate_sentences(50, np.random.default_rng(5)) == generate_sentences(50, np.random.default_rng(5))
    for length in (3, 7, 12, 25):  # an exact length is always reachable
        assert all(len(s.split()) == length for s in generate_sentences(3, np.random.default_rng(length), length, length))


def test_audio_is_16k_mono_non_silent_and_durations_match(corpus_a: Corpus) -> None:
    for split in SPLITS:
        for u in corpus_a[split]:
            info = soundfile.info(u.path)
            assert (info.samplerate, info.channels, info.format, info.subtype) == (SAMPLE_RATE, 1, "FLAC", "PCM_16")
            assert abs(info.frames / info.samplerate - u.duration) < 1e-3
            data, _ = soundfile.read(u.path, dtype="float32")
            assert 0.5 < float(np.max(np.abs(data))) < 1.0  # peak-normalised, not clipped
            assert float(np.sqrt(np.mean(data ** 2))) > 0.02
            assert 0.5 < u.duration < 15.0


def test_synthesis_does_not_depend_on_what_was_said_before() -> None:
    first = espeak.synthesize("turn the kitchen lights blue", "en-us", "m3", 160, 50)
    espeak.synthesize("set an alarm for seven thirty on monday", "en-gb-x-rp", "klatt4", 210, 80)
    assert first.dtype == np.int16 and first.size > 0.5 * espeak.sample_rate()
    np.testing.assert_array_equal(espeak.synthesize("turn the kitchen lights blue", "en-us", "m3", 160, 50), first)


@pytest.mark.parametrize("bad", ["m99", "not-a-voice"])
def test_bad_variant_names_are_rejected(bad: str) -> None:
    cfg = dataclasses.replace(TINY, dev_variants=["m2", bad])
    cfg.validate()  # the configuration alone cannot know which voices the installed eSpeak has
    with pytest.raises(ValueError, match=bad) as info:
        synthetic.check_voices(cfg)
    assert "data.synthetic.dev_variants" in str(info.value)
    assert "voices" in str(info.value)  # names the folder searched
    with pytest.raises(ValueError, match=bad):
        espeak.validate_voice("en-us", bad)


def test_bad_accent_is_rejected() -> None:
    with pytest.raises(ValueError, match="en-xx") as info:
        dataclasses.replace(TINY, accents=["en-us", "en-xx"]).validate()
    assert "data.synthetic.accents" in str(info.value)
    with pytest.raises(ValueError, match="fr"):
        espeak.validate_voice("fr", "m1")


def test_overlapping_variant_lists_are_rejected() -> None:
    cfg = dataclasses.replace(TINY, test_variants=["m4", "m2"])  # m2 is a dev variant
    with pytest.raises(ValueError, match="'m2'") as info:
        cfg.validate()
    assert "dev_variants" in str(info.value) and "test_variants" in str(info.value)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"max_words": 2}, "data.synthetic.max_words: must be >= min_words (3), got 2"),
        ({"rate_min": 300, "rate_max": 200}, "data.synthetic.rate_max"),
        ({"pitch_max": 120}, "data.synthetic.pitch_max"),
        ({"snr_db_min": 30.0, "snr_db_max": 10.0}, "data.synthetic.snr_db_max"),
        ({"train_utterances": 0}, "data.synthetic.train_utterances"),
        ({"train_variants": []}, "data.synthetic.train_variants: must not be empty"),
        ({"train_variants": ["m1", "f2"]}, "'f2' is not reproducible"),
    ],
)
def test_bad_config_values_name_the_field(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        dataclasses.replace(TINY, **change).validate()


def test_build_validates_before_touching_the_cache(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    with pytest.raises(ValueError, match="m99"):
        build_synthetic_corpus(dataclasses.replace(TINY, train_variants=["m99"]), cache)
    assert list(cache.iterdir()) == []


@pytest.mark.slow
def test_folder_without_complete_marker_is_regenerated(tmp_path: Path, corpus_a: Corpus,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    build_synthetic_corpus(TINY, tmp_path, workers=2)
    folder = _corpus_dir(tmp_path)
    (folder / COMPLETE_MARKER).unlink()  # as if the build had crashed before finishing
    victim = folder / "audio" / "dev" / f"{corpus_a['dev'][0].id}.flac"
    victim.unlink()
    (folder / "train.tsv").write_text("garbage\n")

    calls = []
    real_generate = synthetic._generate

    def counting_generate(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(args)
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(synthetic, "_generate", counting_generate)
    corpus = build_synthetic_corpus(TINY, tmp_path, workers=2)
    assert len(calls) == 1
    assert (folder / COMPLETE_MARKER).is_file() and victim.is_file()
    assert [(u.id, u.text, u.speaker, u.duration) for u in corpus["train"]] == \
        [(u.id, u.text, u.speaker, u.duration) for u in corpus_a["train"]]
    np.testing.assert_array_equal(_samples(str(victim)), _samples(corpus_a["dev"][0].path))
