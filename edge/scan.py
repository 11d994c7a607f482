"""Scanning the stream with the cough detector: one window every ``hop`` samples, the cough probabilities
smoothed over neighbouring positions, and each peak of that track one cough.

Pure numpy, no I/O. :class:`CoughScanner` is a stateful callable: feed it chunks of any length and it returns
the peaks it has decided, with positions counted in samples since the last ``reset()``. The detector is handed in
as a callable, each window is scored on its own, and positions sit on a fixed grid, so what it decides does not
depend on chunking. The window at position ``p`` is the one :func:`edge.windows.cut_window` cuts for an onset at
``p``: the daemon scans with the very windows the detector was trained on, at every position instead of at the
onsets the energy gate finds.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .windows import cut_window


@dataclass(frozen=True)
class Peak:
    position: int
    """Stream sample of the peak's grid position: its window starts ``pre_roll_samples`` before it (the onset)."""
    score: float
    """Smoothed cough probability at the peak, in [0, 1]."""
    end: int
    """Sample after the last grid position, within ``radius`` positions of the peak, whose smoothed score stayed at
    or above the threshold without a break: how long the detector kept hearing the cough."""


@dataclass(frozen=True)
class ScanGrid:
    """Where the scanner looks and how it decides; all lengths in samples at the detector's rate."""

    window_samples: int
    """The detector's window."""
    pre_roll_samples: int
    """Where a position sits inside its window (samples before it)."""
    hop_samples: int
    """Samples between grid positions."""
    smooth: int
    """Positions averaged into each smoothed score, centred on it (odd; 1 = none)."""
    radius: int
    """A peak outscores every position within this many positions before it and matches or outscores those after
    it: two peaks are at least ``radius + 1`` positions apart."""
    gate_samples: int
    """Samples from a position on whose RMS decides whether it is scored at all."""
    min_rms_dbfs: float
    """Positions whose ``gate_samples`` are quieter than this (RMS, dBFS) score 0 without running the detector."""

    def __post_init__(self) -> None:
        if not 0 <= self.pre_roll_samples < self.window_samples:
            raise ValueError(f"pre_roll_samples = {self.pre_roll_samples} must be in [0, window_samples = "
                             f"{self.window_samples})")
        if self.hop_samples < 1 or self.radius < 1:
            raise ValueError(f"hop_samples = {self.hop_samples} and radius = {self.radius} must be at least 1")
        if self.smooth < 1 or self.smooth % 2 == 0:
            raise ValueError(f"smooth = {self.smooth} must be odd and at least 1")
        if not 1 <= self.gate_samples <= self.window_samples - self.pre_roll_samples:
            raise ValueError(f"gate_samples = {self.gate_samples} must lie inside the window after its position")


def gate_open(audio: np.ndarray, min_rms_dbfs: float) -> bool:
    """True when ``audio`` (the ``gate_samples`` from a position on) is at least ``min_rms_dbfs`` RMS: the detector
    runs there (pure)."""
    return audio.size > 0 and 10 * np.log10(float(np.mean(audio.astype(np.float64) ** 2)) + 1e-20) >= min_rms_dbfs


def pick_peaks(smoothed: np.ndarray, threshold: float, radius: int, first: int = 0, last: int | None = None
               ) -> list[int]:
    """Indices in ``[first, last)`` of ``smoothed`` that are peaks: above 0, at or above ``threshold``, higher than
    every value up to ``radius`` before and at least as high as every value up to ``radius`` after (pure; the
    earliest of equal neighbours wins)."""
    last = smoothed.size if last is None else last
    out = []
    for k in range(first, last):
        v = smoothed[k]
        if v <= 0 or v < threshold:
            continue
        if v > smoothed[max(0, k - radius):k].max(initial=-1.0) and v >= smoothed[k + 1:k + radius + 1].max(initial=-1.0):
            out.append(k)
    return out


class CoughScanner:
    """Audio chunks -> cough peaks, by scoring the detector's window at every grid position."""

    def __init__(self, cough_probability: Callable[[np.ndarray], np.ndarray], grid: ScanGrid, threshold: float) -> None:
        """``cough_probability`` maps windows ``[n, window_samples]`` to their cough probabilities ``[n]``."""
        self.score, self.g, self.threshold = cough_probability, grid, threshold
        self._half = grid.smooth // 2
        self.reset()

    def reset(self) -> None:
        """Forget all state; sample positions restart at 0."""
        self._buf = np.zeros(0, dtype=np.float32)
        self._buf_start = 0
        self._total = 0
        self._raw: list[float] = []  # raw scores of positions _raw_first.. (scored ones)
        self._raw_first = 0
        self._decided = 0  # positions below this have been decided (peak or not)
        self.scored = 0
        """Windows the detector scored since the last reset (positions under the gate are not scored)."""

    @property
    def undecided_from(self) -> int:
        """Every peak at a stream sample before this has been returned."""
        return self._decided * self.g.hop_samples

    def __call__(self, chunk: np.ndarray) -> list[Peak]:
        """Consume ``chunk`` (mono float32, any length); return the peaks it decided, in stream order."""
        chunk = np.asarray(chunk, dtype=np.float32)
        if chunk.ndim != 1:
            raise ValueError(f"expected mono audio of shape [samples], got shape {chunk.shape}")
        self._buf = np.concatenate([self._buf, chunk])
        self._total += chunk.size
        g = self.g
        while self._next_position() * g.hop_samples - g.pre_roll_samples + g.window_samples <= self._total:
            self._score_next()
        return self._decide(final=False)

    def flush(self) -> list[Peak]:
        """End of stream: score the positions whose windows run past it (zero-padded) and decide every peak."""
        while self._next_position() * self.g.hop_samples < self._total:
            self._score_next()
        return self._decide(final=True)

    def _next_position(self) -> int:
        return self._raw_first + len(self._raw)

    def _score_next(self) -> None:
        g, k = self.g, self._next_position()
        p = k * g.hop_samples
        lo = p - self._buf_start
        value = 0.0
        if gate_open(self._buf[max(lo, 0): lo + g.gate_samples], g.min_rms_dbfs):
            window = cut_window(self._buf, self._buf_start, p, g.window_samples, g.pre_roll_samples)
            value = float(self.score(window[None])[0])
            self.scored += 1
        self._raw.append(value)

    def _decide(self, final: bool) -> list[Peak]:
        """Peaks among the positions whose whole neighbourhood is known (all of them when ``final``)."""
        g, half, n = self.g, self._half, self._next_position()
        known = n if final else n - half - g.radius  # positions k whose smoothed k + radius is computable
        if known <= self._decided:
            return []
        lo = max(0, self._decided - g.radius)  # smoothed scores needed: [lo, known + radius)
        hi = min(n, known + g.radius) if not final else n
        raw = np.array(self._raw, dtype=np.float64)
        padded = np.zeros(hi - lo + 2 * half)  # raw scores of [lo - half, hi + half); outside the stream 0
        a, b = max(lo - half, self._raw_first), min(hi + half, n)
        padded[a - (lo - half): b - (lo - half)] = raw[a - self._raw_first: b - self._raw_first]
        smoothed = np.convolve(padded, np.ones(g.smooth) / g.smooth, mode="valid")  # smoothed[i] is position lo + i
        peaks = []
        for i in pick_peaks(smoothed, self.threshold, g.radius, self._decided - lo, known - lo):
            j = i
            while j + 1 < smoothed.size and j + 1 - i <= g.radius and smoothed[j + 1] >= self.threshold:
                j += 1
            peaks.append(Peak(position=(lo + i) * g.hop_samples, score=float(smoothed[i]),
                              end=(lo + j + 1) * g.hop_samples))
        self._decided = known
        self._forget()
        return peaks

    def _forget(self) -> None:
        """Drop raw scores and audio that no position still to be scored or decided needs."""
        g = self.g
        keep_from = max(0, self._decided - g.radius - self._half)
        if keep_from > self._raw_first:
            del self._raw[:keep_from - self._raw_first]
            self._raw_first = keep_from
        first_needed = self._next_position() * g.hop_samples - g.pre_roll_samples
        drop = first_needed - self._buf_start
        if drop > 0:
            self._buf = self._buf[drop:]
            self._buf_start += drop
