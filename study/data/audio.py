"""Audio reading with soundfile (torchaudio.load needs TorchCodec), mono float32 at the model's rate."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import soundfile
import torch
import torchaudio

from study.data.manifest import DataError

SAMPLE_RATE = 16_000


@lru_cache(maxsize=8)
def _resampler(orig_freq: int, new_freq: int) -> torchaudio.transforms.Resample:
    return torchaudio.transforms.Resample(orig_freq, new_freq)


def resample(wave: torch.Tensor, orig_freq: int, new_freq: int = SAMPLE_RATE) -> torch.Tensor:
    if orig_freq == new_freq:
        return wave
    return _resampler(orig_freq, new_freq)(wave)


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE,
               segment: tuple[float, float] | None = None) -> torch.Tensor:
    """Returns a 1-D float32 waveform in [-1, 1]; `segment`: (start, length) in seconds, else the whole file.
    Raises DataError naming the file when it cannot be read."""
    try:
        with soundfile.SoundFile(str(path)) as f:
            rate, frames = f.samplerate, -1
            if segment is not None:
                f.seek(min(round(segment[0] * rate), f.frames))
                frames = round(segment[1] * rate)
            data = f.read(frames, dtype="float32", always_2d=True)  # (samples, channels)
    except Exception as exc:  # soundfile raises LibsndfileError, RuntimeError or OSError
        raise DataError(f"{path}: cannot read audio ({exc})") from exc
    if data.shape[0] == 0:
        where = "" if segment is None else f" from {segment[0]:.2f} s"
        raise DataError(f"{path}: audio file holds no samples{where}")
    wave = torch.from_numpy(data).mean(dim=1)
    return resample(wave, rate, sample_rate)


def audio_duration(path: str | Path) -> float:
    """Duration in seconds from the header only; raises DataError naming the file on a bad header."""
    try:
        info = soundfile.info(str(path))
    except Exception as exc:
        raise DataError(f"{path}: cannot read audio ({exc})") from exc
    if info.frames == 0:
        raise DataError(f"{path}: audio file holds no samples")
    return info.frames / info.samplerate
