"""The built-in synthetic English speech corpus: seeded command-style sentences spoken by eSpeak NG.

Layout under `cache_root / f"synthetic-{hash}"` (hash = config + format version + eSpeak version):
    audio/<split>/<id>.flac    16 kHz mono 16-bit FLAC
    train.tsv dev.tsv test.tsv manifests (study.data.manifest)
    config.json                the config that made it
    COMPLETE                   written last; a folder without it is never used
The folder is built under a temporary sibling name and renamed into place when complete, so a crash
leaves no folder that could be mistaken for a finished one.

Determinism: every random draw for a split is made up front, in a fixed order, from a generator
seeded by (seed, split); the workers only execute those draws, and eSpeak speaks each utterance from
a freshly initialised state (see study.data.espeak), so the corpus is bit-identical whatever the
number of worker processes.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import socket
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile
import torch

from study.config import ConfigError
from study.config.synthetic import FIELD_PREFIX, SPLITS, SyntheticConfig
from study.data import espeak
from study.data.audio import SAMPLE_RATE, resample
from study.data.manifest import DataError, Utterance, read_manifest, write_manifest
from study.data.sentences import generate_sentences
from study.runtime import forkserver, progress

CORPUS_FORMAT_VERSION = 1  # bump when the rendering below changes, so old caches are not reused
COMPLETE_MARKER = "COMPLETE"
PEAK_LEVEL = 0.9  # peak after normalisation, headroom against clipping in the int16 conversion
TRIM_THRESHOLD_DB = -40.0  # relative to the peak: quieter edges count as silence
TRIM_MARGIN_S = 0.05  # silence kept at each edge when trimming
PROGRESS_EVERY = 500

def check_voices(cfg: SyntheticConfig) -> None:
    """Every accent and variant must have a voice file in the installed eSpeak data; raises
    ConfigError naming the field (e.g. "data.synthetic.dev_variants: ...")."""
    for accent in cfg.accents:
        try:
            espeak.validate_accent(accent)
        except ValueError as exc:
            raise ConfigError(f"{FIELD_PREFIX}.accents: {exc}") from None
    for split in SPLITS:
        for variant in getattr(cfg, f"{split}_variants"):
            try:
                espeak.validate_voice(cfg.accents[0], variant)
            except ValueError as exc:
                raise ConfigError(f"{FIELD_PREFIX}.{split}_variants: {exc}") from None


def config_hash(cfg: SyntheticConfig) -> str:
    """First 12 hex chars of sha256 over the config (sorted JSON), format and eSpeak versions."""
    payload = {"config": asdict(cfg), "format_version": CORPUS_FORMAT_VERSION, "espeak": espeak.version()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------------------------
# Planning (all random draws) and rendering (deterministic given a plan)


@dataclass(frozen=True)
class _Job:
    split: str
    utt_id: str
    text: str
    accent: str
    variant: str
    rate_wpm: int
    pitch: int
    snr_db: float
    pink_noise: bool
    noise_seed: int
    lead_s: float
    trail_s: float
    out_path: str  # where the worker writes the FLAC (inside the partial folder)


def _plan_split(cfg: SyntheticConfig, split: str, audio_root: Path) -> list[_Job]:
    """All draws of one split, in a fixed order, from its own generator (seed, split number):
    dev and test stay the same utterances when only the train size changes."""
    n = getattr(cfg, f"{split}_utterances")
    variants = getattr(cfg, f"{split}_variants")
    rng = np.random.default_rng([cfg.seed, SPLITS.index(split)])
    texts = generate_sentences(n, rng, cfg.min_words, cfg.max_words)
    accent_ix = rng.integers(len(cfg.accents), size=n)
    variant_ix = rng.integers(len(variants), size=n)
    rates = rng.integers(cfg.rate_min, cfg.rate_max + 1, size=n)
    pitches = rng.integers(cfg.pitch_min, cfg.pitch_max + 1, size=n)
    snrs = rng.uniform(cfg.snr_db_min, cfg.snr_db_max, size=n)
    pink = rng.random(size=n) < 0.5
    noise_seeds = rng.integers(0, 2**63 - 1, size=n, dtype=np.int64)
    leads = rng.uniform(0.0, cfg.pad_max_s, size=n)
    trails = rng.uniform(0.0, cfg.pad_max_s, size=n)
    jobs = []
    for i in range(n):
        utt_id = f"synth-{split}-{i:05d}"
        jobs.append(_Job(
            split=split, utt_id=utt_id, text=texts[i], accent=cfg.accents[accent_ix[i]],
            variant=variants[variant_ix[i]], rate_wpm=int(rates[i]), pitch=int(pitches[i]),
            snr_db=float(snrs[i]), pink_noise=bool(pink[i]), noise_seed=int(noise_seeds[i]),
            lead_s=float(leads[i]), trail_s=float(trails[i]),
            out_path=str(audio_root / split / f"{utt_id}.flac"),
        ))
    return jobs


def _trim_silence(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    """Cut edges quieter than TRIM_THRESHOLD_DB below the peak, keeping TRIM_MARGIN_S of them."""
    level = np.abs(wave)
    loud = np.flatnonzero(level > level.max() * 10 ** (TRIM_THRESHOLD_DB / 20))
    margin = int(TRIM_MARGIN_S * sample_rate)
    return wave[max(0, loud[0] - margin): loud[-1] + 1 + margin]


def _noise(rng: np.random.Generator, n: int, pink: bool) -> np.ndarray:
    """Unit-RMS white or pink (1/f power) noise, (n,) float64."""
    white = rng.standard_normal(n)
    if pink and n > 2:
        spectrum = np.fft.rfft(white)
        freqs = np.arange(spectrum.shape[0], dtype=np.float64)
        freqs[0] = freqs[1]  # avoid dividing by zero; DC gets the lowest band's gain
        white = np.fft.irfft(spectrum / np.sqrt(freqs), n)
    return white / np.sqrt(np.mean(white ** 2))


def _render(job: _Job) -> int:
    """Synthesise, resample, trim, pad, add noise, normalise and write one utterance; returns samples."""
    raw = espeak.synthesize(job.text, job.accent, job.variant, job.rate_wpm, job.pitch)  # int16 (n,)
    if raw.size == 0 or not np.any(raw):
        raise RuntimeError(f"{job.utt_id}: eSpeak produced no sound for voice {job.accent}+{job.variant}: {job.text!r}")
    wave = torch.from_numpy(raw.astype(np.float32) / 32768.0)
    speech = resample(wave, espeak.sample_rate(), SAMPLE_RATE).numpy().astype(np.float64)  # (samples,)
    speech = _trim_silence(speech, SAMPLE_RATE)
    speech_power = float(np.mean(speech ** 2))
    lead, trail = round(job.lead_s * SAMPLE_RATE), round(job.trail_s * SAMPLE_RATE)
    signal = np.concatenate([np.zeros(lead), speech, np.zeros(trail)])
    noise = _noise(np.random.default_rng(job.noise_seed), signal.shape[0], job.pink_noise)
    mixed = signal + noise * math.sqrt(speech_power / 10 ** (job.snr_db / 10))
    mixed *= PEAK_LEVEL / np.max(np.abs(mixed))
    pcm = np.round(mixed * 32767).astype(np.int16)
    soundfile.write(job.out_path, pcm, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return int(pcm.shape[0])


def _init_worker() -> None:
    # One thread: no oversubscription with several workers, and the same float path in every worker.
    torch.set_num_threads(1)
    espeak.initialize()


# ---------------------------------------------------------------------------------------------
# The cache


def _corpus_dir(cfg: SyntheticConfig, cache_root: Path) -> Path:
    return Path(cache_root) / f"synthetic-{config_hash(cfg)}"


def _read_corpus(root: Path, cfg: SyntheticConfig) -> dict[str, list[Utterance]]:
    """Read a complete corpus; paths are rebuilt from `root` so a moved cache still works."""
    corpus = {}
    for split in SPLITS:
        utterances = read_manifest(root / f"{split}.tsv")
        expected = getattr(cfg, f"{split}_utterances")
        if len(utterances) != expected:
            raise DataError(f"{root / f'{split}.tsv'}: {len(utterances)} utterances, config says {expected}")
        corpus[split] = [
            Utterance(u.id, str(root / "audio" / split / f"{u.id}.flac"), u.duration, u.text, u.speaker)
            for u in utterances
        ]
    return corpus


def _remove_stale_partials(root: Path) -> None:
    """Remove partial folders of this corpus left by dead processes on this host."""
    prefix = f"{root.name}.partial-{socket.gethostname()}-"
    for path in root.parent.glob(f"{root.name}.partial-*"):
        if not path.name.startswith(prefix):
            continue  # another host's build: its pid means nothing here
        try:
            pid = int(path.name[len(prefix):])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except (ValueError, PermissionError):
            pass


def _generate(cfg: SyntheticConfig, root: Path, workers: int) -> dict[str, list[Utterance]]:
    root.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(root)
    partial = root.with_name(f"{root.name}.partial-{socket.gethostname()}-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        jobs = [job for split in SPLITS for job in _plan_split(cfg, split, partial / "audio")]
        for split in SPLITS:
            (partial / "audio" / split).mkdir(parents=True)
        start = time.perf_counter()
        print(f"synthetic corpus: generating {len(jobs)} utterances with {workers} worker(s) into {root}",
              file=sys.stderr, flush=True)
        lengths: list[int] = []
        # eSpeak state is per process, and no child may fork a parent whose torch has run: children of the
        # forkserver (study/runtime/forkserver.py), which has imported torch once and run nothing
        with forkserver.context().Pool(workers, initializer=_init_worker) as pool:
            for n_samples in pool.imap(_render, jobs, chunksize=4):
                lengths.append(n_samples)
                progress.beat()  # generating a large corpus is not a hang
                if len(lengths) % PROGRESS_EVERY == 0:
                    print(f"synthetic corpus: {len(lengths)}/{len(jobs)} utterances "
                          f"({time.perf_counter() - start:.1f} s)", file=sys.stderr, flush=True)
        corpus: dict[str, list[Utterance]] = {split: [] for split in SPLITS}
        for job, n_samples in zip(jobs, lengths):
            corpus[job.split].append(Utterance(
                id=job.utt_id, path=str(root / "audio" / job.split / f"{job.utt_id}.flac"),
                duration=n_samples / SAMPLE_RATE, text=job.text, speaker=f"{job.accent}+{job.variant}",
            ))
        for split in SPLITS:
            write_manifest(partial / f"{split}.tsv", corpus[split])
        info = {"format_version": CORPUS_FORMAT_VERSION, "espeak_version": espeak.version(),
                "hash": config_hash(cfg), "config": asdict(cfg)}
        (partial / "config.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        (partial / COMPLETE_MARKER).write_text("")  # last: the folder is now whole
        hours = sum(lengths) / SAMPLE_RATE / 3600
        print(f"synthetic corpus: {len(jobs)} utterances, {hours:.2f} h of audio, "
              f"{time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
        if root.exists():
            if (root / COMPLETE_MARKER).is_file():  # a concurrent build finished first: use it
                return _read_corpus(root, cfg)
            shutil.rmtree(root)  # an incomplete folder (crash, or marker removed): replace it
        try:
            os.rename(partial, root)
        except OSError:
            if (root / COMPLETE_MARKER).is_file():  # lost a race against a concurrent build
                return _read_corpus(root, cfg)
            raise
        return _read_corpus(root, cfg)  # as a cached build returns it (durations rounded in the TSV)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def build_synthetic_corpus(cfg: SyntheticConfig, cache_root: Path, workers: int = 2) -> dict[str, list[Utterance]]:
    """Build (or reuse) the corpus for `cfg` under cache_root; returns {"train", "dev", "test"} lists.

    Raises ValueError naming the config field on a bad config. Generation uses forkserver worker
    processes, so a script calling this must guard its entry point with `if __name__ == "__main__":`.
    """
    cfg.validate()
    check_voices(cfg)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    root = _corpus_dir(cfg, Path(cache_root))
    if (root / COMPLETE_MARKER).is_file():
        try:
            return _read_corpus(root, cfg)
        except DataError as exc:
            print(f"synthetic corpus: {root} is damaged ({exc}); regenerating", file=sys.stderr, flush=True)
            (root / COMPLETE_MARKER).unlink(missing_ok=True)
    return _generate(cfg, root, workers)
