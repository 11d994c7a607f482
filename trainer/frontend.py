"""Log-mel front end as a torch module that exports to ONNX (STFT op, opset >= 17).

It lives inside the student so that training and the device run the same DSP: the edge feeds raw
16 kHz samples in [-1, 1] and never computes features itself.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class FrontendConfig:
    sample_rate: int = 16000
    """Input sample rate in Hz."""
    n_fft: int = 512
    """FFT and window size in samples (32 ms at 16 kHz); a power of two, for which onnxruntime's STFT
    uses a fast FFT (n_fft = 400 ran about 6x slower on one core)."""
    hop: int = 320
    """Hop between frames in samples (20 ms at 16 kHz; 10 ms doubled the front end's cost, which
    dominates the student's latency under onnxruntime)."""
    n_mels: int = 40
    """Number of mel bands."""
    f_min: float = 50.0
    """Lowest mel band edge in Hz."""
    f_max: float = 8000.0
    """Highest mel band edge in Hz."""

    def to_dict(self) -> dict:
        return asdict(self)


def mel_filterbank(cfg: FrontendConfig) -> torch.Tensor:
    """Slaney-normalised mel filterbank ``[n_fft//2 + 1, n_mels]`` (librosa's, transposed)."""
    import librosa

    fb = librosa.filters.mel(sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.f_min, fmax=cfg.f_max)
    return torch.from_numpy(fb.T.copy()).float()


class LogMel(nn.Module):
    """``[batch, samples]`` float audio -> ``[batch, 1, n_mels, frames]`` log-mel, gain-normalised.

    The mean log energy of each example is subtracted, so a quieter or louder microphone gives the
    same features up to clipping; the relative level inside the window is kept.
    """

    def __init__(self, cfg: FrontendConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("window", torch.hann_window(cfg.n_fft, periodic=True))
        self.register_buffer("mel", mel_filterbank(cfg))

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(
            audio,
            n_fft=self.cfg.n_fft,
            hop_length=self.cfg.hop,
            win_length=self.cfg.n_fft,
            window=self.window,
            center=False,
            onesided=True,
            return_complex=False,
        )  # [batch, freq, frames, 2]
        power = spec.pow(2).sum(-1)  # [batch, freq, frames]
        mel = torch.matmul(power.transpose(1, 2), self.mel)  # [batch, frames, n_mels]
        logmel = torch.log(mel + 1e-6)
        logmel = logmel - logmel.mean(dim=(1, 2), keepdim=True)
        return logmel.transpose(1, 2).unsqueeze(1)
