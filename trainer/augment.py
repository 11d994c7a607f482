"""Waveform augmentation of training windows (numpy), for teacher fine-tuning and the student's input.

The teacher's cached outputs, the student's distillation targets, are computed on clean crops.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AugmentSettings:
    """Augmentation of training windows: ``--augment-*`` flags and the ``[augment]`` config section."""

    apply: bool = True
    """Augment training windows at all (``--no-augment-apply`` trains on clean crops)."""
    gain_db: float = 6.0
    """Random gain drawn uniformly in [-gain_db, +gain_db] dB."""
    noise_p: float = 0.5
    """Probability of white noise."""
    noise_snr_min_db: float = 15.0
    """Lowest signal-to-noise ratio of that noise, in dB."""
    noise_snr_max_db: float = 40.0
    """Highest signal-to-noise ratio of that noise, in dB."""
    shift_p: float = 0.5
    """Probability of a time shift."""
    shift_samples: int = 1600
    """Largest time shift in samples (drawn uniformly in [-shift, +shift]; the vacated edge is zero-filled)."""
    telephone_p: float = 0.25
    """Probability of a 300-3400 Hz telephone band-limit."""
    telephone_balance: bool = False
    """Draw the telephone band-limit per class, so that every class's windows come through the telephone band
    (by their source or by this augmentation) as often as those of the class whose sources are most often
    telephones: the channel alone then cannot tell a class (see :func:`telephone_rates`). Off by default: on the
    validation stream it did not beat the shipped recipe (README, "Telephone balance, tested")."""
    mix_p: float = 0.3
    """Probability of mixing in another clip's window as background (speech, breathing, other coughs)."""
    mix_snr_min_db: float = 10.0
    """Lowest foreground-to-background ratio of the mixed-in window, in dB."""
    mix_snr_max_db: float = 30.0
    """Highest foreground-to-background ratio of the mixed-in window, in dB."""

    def __post_init__(self) -> None:
        for name in ("noise_p", "shift_p", "telephone_p", "mix_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"augment.{name} = {getattr(self, name)!r} must be a probability in [0, 1]")
        for lo, hi in (("noise_snr_min_db", "noise_snr_max_db"), ("mix_snr_min_db", "mix_snr_max_db")):
            if getattr(self, lo) > getattr(self, hi):
                raise ValueError(f"augment.{lo} = {getattr(self, lo)!r} must not exceed augment.{hi} = "
                                 f"{getattr(self, hi)!r}")
        if self.gain_db < 0 or self.shift_samples < 0:
            raise ValueError(f"augment.gain_db = {self.gain_db!r} and augment.shift_samples = "
                             f"{self.shift_samples!r} must be >= 0")


def telephone_rates(phone: np.ndarray, targets: np.ndarray, telephone_p: float) -> np.ndarray:
    """Each window's probability of a telephone band-limit when classes are balanced by channel.

    ``phone[i]``: window ``i`` already came through a telephone (its recording did); ``targets[i]``: its class.
    A class whose windows are telephone in share ``s`` ends at ``s + (1 - s) * p`` after a band-limit drawn with
    probability ``p``; every class is brought to the highest such share among the classes at ``telephone_p``.
    Windows already band-limited get 0 (a second band-limit changes nothing).
    """
    phone, targets = np.asarray(phone, dtype=bool), np.asarray(targets)
    if phone.shape != targets.shape:
        raise ValueError(f"phone {phone.shape} and targets {targets.shape} must have the same shape")
    classes = np.unique(targets)
    share = {c: float(phone[targets == c].mean()) for c in classes}
    goal = max(s + (1.0 - s) * telephone_p for s in share.values()) if classes.size else telephone_p
    rate = {c: 0.0 if s >= 1.0 else (goal - s) / (1.0 - s) for c, s in share.items()}
    return np.where(phone, 0.0, np.array([rate[c] for c in targets.tolist()], dtype=float).reshape(targets.shape))


def augment(x: np.ndarray, rng: np.random.Generator, s: AugmentSettings, sample_rate: int = 16000,
            background: np.ndarray | None = None, telephone_p: float | None = None) -> np.ndarray:
    """One augmented copy of ``x``; ``telephone_p`` (when given) replaces ``s.telephone_p`` for this window."""
    x = x.astype(np.float32, copy=True)
    if background is not None and rng.random() < s.mix_p:
        ratio = np.sqrt((np.mean(x**2) + 1e-10) / (np.mean(background**2) + 1e-10))
        x = x + background * np.float32(ratio / 10 ** (rng.uniform(s.mix_snr_min_db, s.mix_snr_max_db) / 20))
    if rng.random() < s.shift_p and s.shift_samples:
        shift = int(rng.integers(-s.shift_samples, s.shift_samples + 1))
        x = np.roll(x, shift)
        if shift > 0:
            x[:shift] = 0
        elif shift < 0:
            x[shift:] = 0
    if rng.random() < (s.telephone_p if telephone_p is None else telephone_p):
        x = band_limit(x, sample_rate, 300.0, 3400.0)
    if rng.random() < s.noise_p:
        power = float(np.mean(x**2)) + 1e-10
        snr = rng.uniform(s.noise_snr_min_db, s.noise_snr_max_db)
        x = x + rng.standard_normal(x.size).astype(np.float32) * np.sqrt(power / 10 ** (snr / 10))
    x *= np.float32(10 ** (rng.uniform(-s.gain_db, s.gain_db) / 20))
    return np.clip(x, -1.0, 1.0).astype(np.float32)


def band_limit(x: np.ndarray, sample_rate: int, lo_hz: float, hi_hz: float) -> np.ndarray:
    """Zero the spectrum outside [lo_hz, hi_hz] (a brick-wall telephone channel)."""
    spec = np.fft.rfft(x)
    freqs = np.fft.rfftfreq(x.size, 1.0 / sample_rate)
    spec[(freqs < lo_hz) | (freqs > hi_hz)] = 0
    return np.fft.irfft(spec, n=x.size).astype(np.float32)
