"""Log-mel features of one waveform: what the feature cache stores and an export's users compute."""
from __future__ import annotations

import torch
import torchaudio

from study.config import FeatureConfig
from study.data.audio import SAMPLE_RATE


class LogMel(torch.nn.Module):
    def __init__(self, cfg: FeatureConfig):
        super().__init__()
        win = round(SAMPLE_RATE * cfg.win_ms / 1000)
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=SAMPLE_RATE, n_fft=512 if win <= 512 else win, win_length=win,
            hop_length=round(SAMPLE_RATE * cfg.hop_ms / 1000), n_mels=cfg.n_mels)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:  # (samples,) -> (frames, n_mels)
        return torch.log(self.mel(wave) + 1e-6).transpose(0, 1)
