"""Waveform augmentation for training windows (numpy; applied to the student's input only)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AugmentSettings:
    gain_db: float = 6.0
    """Random gain drawn uniformly in [-gain_db, +gain_db] dB."""
    noise_snr_db: tuple[float, float] = (15.0, 40.0)
    """White noise at an SNR drawn uniformly in this range (dB), with probability ``p``."""
    shift_samples: int = 1600
    """Circular-free time shift drawn uniformly in [-shift, +shift] samples (zero-filled)."""
    telephone_p: float = 0.25
    """Probability of a 300-3400 Hz telephone band-limit."""
    p: float = 0.5
    """Probability of each of noise and shift."""
    mix_p: float = 0.3
    """Probability of mixing in another clip's window as background (speech, breathing, other coughs)."""
    mix_snr_db: tuple[float, float] = (10.0, 30.0)
    """Foreground-to-background ratio of the mixed-in window, drawn uniformly in this range (dB)."""

    def __post_init__(self) -> None:
        if not (0.0 <= self.p <= 1.0 and 0.0 <= self.telephone_p <= 1.0):
            raise ValueError("augmentation probabilities must be in [0, 1]")


def augment(x: np.ndarray, rng: np.random.Generator, s: AugmentSettings, sample_rate: int = 16000,
            background: np.ndarray | None = None) -> np.ndarray:
    x = x.astype(np.float32, copy=True)
    if background is not None and rng.random() < s.mix_p:
        ratio = np.sqrt((np.mean(x**2) + 1e-10) / (np.mean(background**2) + 1e-10))
        x = x + background * np.float32(ratio / 10 ** (rng.uniform(*s.mix_snr_db) / 20))
    if rng.random() < s.p and s.shift_samples:
        shift = int(rng.integers(-s.shift_samples, s.shift_samples + 1))
        x = np.roll(x, shift)
        if shift > 0:
            x[:shift] = 0
        elif shift < 0:
            x[shift:] = 0
    if rng.random() < s.telephone_p:
        x = band_limit(x, sample_rate, 300.0, 3400.0)
    if rng.random() < s.p:
        power = float(np.mean(x**2)) + 1e-10
        snr = rng.uniform(*s.noise_snr_db)
        x = x + rng.standard_normal(x.size).astype(np.float32) * np.sqrt(power / 10 ** (snr / 10))
    x *= np.float32(10 ** (rng.uniform(-s.gain_db, s.gain_db) / 20))
    return np.clip(x, -1.0, 1.0).astype(np.float32)


def band_limit(x: np.ndarray, sample_rate: int, lo_hz: float, hi_hz: float) -> np.ndarray:
    """Zero the spectrum outside [lo_hz, hi_hz] (a brick-wall telephone channel)."""
    spec = np.fft.rfft(x)
    freqs = np.fft.rfftfreq(x.size, 1.0 / sample_rate)
    spec[(freqs < lo_hz) | (freqs > hi_hz)] = 0
    return np.fft.irfft(spec, n=x.size).astype(np.float32)
