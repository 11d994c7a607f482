"""Streaming cough-onset detection: band energy and spectral flux against an adaptive noise floor.

Pure numpy, no I/O. :class:`OnsetDetector` is a stateful callable: feed it chunks of any length and it
returns the sounds that have ended, with onset and offset counted in samples since the last
``reset()``. Internally audio is cut into fixed frames, so its decisions do not depend on chunking.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, fields
from itertools import islice

import numpy as np

from .config import ConfigError

BURST_WITHIN_DB = 10.0
"""A burst (:meth:`OnsetDetector.burst`) runs through the frames within this many dB of its loudest."""
BURST_BACK_MS = 300.0
"""How far back from its loudest frame a burst may start (:meth:`OnsetDetector.burst`), in milliseconds: as far as
the stream benchmark's truth of one cough reaches back from its loudest frame."""


@dataclass(frozen=True)
class OnsetSettings:
    frame_ms: float = 16.0
    """Analysis frame length in milliseconds (non-overlapping)."""
    band_low_hz: float = 300.0
    """Lower edge of the energy band in Hz."""
    band_high_hz: float = 4000.0
    """Upper edge of the energy band in Hz."""
    on_db: float = 15.0
    """An onset needs band energy this many dB above the noise floor."""
    off_db: float = 8.0
    """A sound ends when band energy falls below floor + off_db (hysteresis)."""
    flux_db: float = 6.0
    """An onset also needs the mean positive spectral change vs. the previous frame above this, in dB."""
    min_level_dbfs: float = -55.0
    """Band energy below this absolute level in dBFS never triggers (digital silence, hiss)."""
    refractory_ms: float = 250.0
    """No new onset within this many milliseconds after a sound ends, unless it is a sudden rise."""
    retrigger_db: float = 12.0
    """A rise of this many dB over the previous frames (with flux) starts a new sound even while one is
    active or refractory, so a cough right after a word is not swallowed by it."""
    min_gap_ms: float = 100.0
    """A re-triggered onset needs at least this many milliseconds since the current sound's onset."""
    hangover_ms: float = 80.0
    """A sound ends only after this many milliseconds below the off level."""
    max_duration_ms: float = 1500.0
    """A sound longer than this is closed at this length, in milliseconds."""
    floor_rise_s: float = 4.0
    """Time constant, in seconds, with which the noise floor rises towards louder background."""
    floor_fall_s: float = 0.2
    """Time constant, in seconds, with which the noise floor falls towards quieter background."""
    merge_gap_ms: float = 100.0
    """One cough, one event: a sound that starts less than this many milliseconds after the end of an accepted
    cough's sound (or of a sound already merged into it), and less than ``merge_max_ms`` after the cough's
    onset, is that cough's next phase, not a new cough. 0 = every accepted sound is its own event."""
    merge_max_ms: float = 600.0
    """A sound starting this many milliseconds or more after an accepted cough's onset is never merged into it:
    a cough's explosive and voiced phases come 0.14-0.6 s apart (0.4 split one cough in eight on the validation
    stream; the pause rule below keeps a bout's coughs apart)."""
    merge_pause_db: float = 20.0
    """A sound is never merged into a cough when, between that cough's onset and the sound's, its band energy stayed
    this many dB or more below the cough's band peak for ``merge_pause_ms``: a pause, so the sound is the bout's next
    cough (the onset detector's end of a sound is relative to the noise floor, and a loud cough's tail often keeps it
    going into the next cough). A cough's phases follow each other without such a pause. 0 = off."""
    merge_pause_ms: float = 100.0
    """How long the band energy must stay that far down to count as a pause, in milliseconds."""
    supersede_ms: float = 600.0
    """An accepted sound yields to a sound accepted less than this many milliseconds after its onset whose cough
    score is more than ``supersede_margin`` higher: its window held that cough off its place (a room sound just
    before a cough). Events are published at least this much later (longer while a sound that started within it
    goes on). 0 = every accepted sound is published as soon as it is scored."""
    supersede_margin: float = 0.2
    """How much higher (cough score, 0-1) the later sound must score. The coughs of a bout score less alike than
    one might think: with 0.05 a fifth of the bouts' first coughs on the validation stream yielded to the next."""
    supersede_louder_db: float = 10.0
    """An accepted sound also yields to a sound accepted less than ``supersede_ms`` after its onset whose band peak is
    at least this many dB louder, however the two score: a quiet room sound whose window held a cough off its place
    often scores as high as the cough itself. The coughs of a bout come within a few dB of each other and stay
    separate events. 0 = off (score alone decides)."""
    burst_db: float = 6.0
    """Which cough an accepted sound's event stands for: where the loudest burst its cough detector window heard
    (:meth:`OnsetDetector.burst`) is at least this many dB louder than the sound's own first ``burst_same_ms``, that
    burst; else the sound itself. The event is stamped at the start of what it stands for, and an event standing for
    a burst that starts within ``burst_same_ms`` of an earlier event's is that cough again (it yields by the
    supersede rules, or is dropped): a room sound just before or after a cough, whose window holds the cough, is not
    a second event beside it (README, "One event per burst"). 0 = off: events at their sound's onset, none matched
    by burst."""
    burst_same_ms: float = 100.0
    """Bursts starting less than this many milliseconds apart are one cough's; also the stretch from a sound's onset
    that is its own start."""
    burst_rescore: bool = False
    """Research, off by default: a sound that stands for a later burst is scored (detector and verifier) on the
    window cut at that burst instead of at its own onset, as a cough's training windows are cut; its event comes up
    to the detector's window less its pre-roll (0.75 s) later. README, "One event per burst"."""
    views: int = 1
    """Windows the cough detector scores per sound, centred on its onset and ``view_step_ms`` apart; the sound's
    cough score is the mean of their cough probabilities. Odd; 1 = the window at the onset only. 5 was tried
    (README, Shipped models): better on the validation stream, not on the test stream, at twice the compute."""
    view_step_ms: float = 50.0
    """Milliseconds between the cough detector's views of a sound (events come ``views // 2`` steps later)."""
    scan_ms: float = 0.0
    """0 = the cough detector scores the sounds this onset detector finds (the energy gate). Otherwise it scans: it
    scores its window every ``scan_ms`` milliseconds of the stream, wherever the ``scan_gate_ms`` after the position
    reach ``scan_min_dbfs``, and each peak of its smoothed score at or above its threshold is one cough (the onset
    detector then only reports the level and the noise floor; the merge, yield and views settings do not apply)."""
    scan_smooth: int = 3
    """Scanning: each position's score is the mean cough probability of this many positions centred on it (odd)."""
    scan_spacing_ms: float = 400.0
    """Scanning: a peak outscores every position up to this many milliseconds before it and matches or outscores
    those up to this far after it, so two events are more than this far apart (a cough's phases are one event)."""
    scan_gate_ms: float = 250.0
    """Scanning: milliseconds from a position on whose RMS level decides whether the detector runs there."""
    scan_min_dbfs: float = -60.0
    """Scanning: positions whose ``scan_gate_ms`` are quieter than this RMS level (dBFS) score 0 without running
    the detector: a silent room costs nothing."""

    def __post_init__(self) -> None:
        for f in fields(self):
            if not math.isfinite(getattr(self, f.name)):
                raise ValueError(f"{f.name} = {getattr(self, f.name)} must be a finite number")
        if not 2.0 <= self.frame_ms <= 64.0:
            raise ValueError(f"frame_ms = {self.frame_ms} must be in [2, 64] ms")
        if not 0 < self.band_low_hz < self.band_high_hz:
            raise ValueError(f"band {self.band_low_hz}-{self.band_high_hz} Hz is empty")
        if not 0 < self.off_db <= self.on_db:
            raise ValueError(f"need 0 < off_db ({self.off_db}) <= on_db ({self.on_db})")
        for name in ("retrigger_db", "min_gap_ms", "refractory_ms", "hangover_ms", "max_duration_ms", "floor_rise_s", "floor_fall_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} = {getattr(self, name)} must be > 0")
        if not 0 <= self.merge_gap_ms <= 2000:
            raise ValueError(f"merge_gap_ms = {self.merge_gap_ms} must be in [0, 2000] ms")
        if not 0 < self.merge_max_ms <= self.max_duration_ms:
            raise ValueError(f"merge_max_ms = {self.merge_max_ms} must be in (0, max_duration_ms = "
                             f"{self.max_duration_ms}] ms")
        if not 0 <= self.merge_pause_db <= 60:
            raise ValueError(f"merge_pause_db = {self.merge_pause_db} must be in [0, 60] dB")
        if not 0 < self.merge_pause_ms <= 1000:
            raise ValueError(f"merge_pause_ms = {self.merge_pause_ms} must be in (0, 1000] ms")
        if not 0 <= self.supersede_ms <= 2000:
            raise ValueError(f"supersede_ms = {self.supersede_ms} must be in [0, 2000] ms")
        if not 0 <= self.supersede_margin < 1:
            raise ValueError(f"supersede_margin = {self.supersede_margin} must be in [0, 1)")
        if not 0 <= self.supersede_louder_db <= 60:
            raise ValueError(f"supersede_louder_db = {self.supersede_louder_db} must be in [0, 60] dB")
        if not 0 <= self.burst_db <= 40:
            raise ValueError(f"burst_db = {self.burst_db} must be in [0, 40] dB")
        if not 0 < self.burst_same_ms <= 500:
            raise ValueError(f"burst_same_ms = {self.burst_same_ms} must be in (0, 500] ms")
        if not (isinstance(self.views, int) and 1 <= self.views <= 15 and self.views % 2):
            raise ValueError(f"views = {self.views} must be an odd whole number in 1..15")
        if not 0 < self.view_step_ms <= 250:
            raise ValueError(f"view_step_ms = {self.view_step_ms} must be in (0, 250] ms")
        if self.scan_ms != 0 and not 10 <= self.scan_ms <= 500:
            raise ValueError(f"scan_ms = {self.scan_ms} must be 0 (off) or in [10, 500] ms")
        if not (isinstance(self.scan_smooth, int) and 1 <= self.scan_smooth <= 15 and self.scan_smooth % 2):
            raise ValueError(f"scan_smooth = {self.scan_smooth} must be an odd whole number in 1..15")
        if not 0 < self.scan_spacing_ms <= 2000:
            raise ValueError(f"scan_spacing_ms = {self.scan_spacing_ms} must be in (0, 2000] ms")
        if not 1 <= self.scan_gate_ms <= 1000:
            raise ValueError(f"scan_gate_ms = {self.scan_gate_ms} must be in [1, 1000] ms")
        if not -120 <= self.scan_min_dbfs <= 0:
            raise ValueError(f"scan_min_dbfs = {self.scan_min_dbfs} must be in [-120, 0] dBFS")
        for name, most in (("min_gap_ms", 10_000), ("refractory_ms", 10_000), ("hangover_ms", 10_000),
                           ("max_duration_ms", 10_000), ("floor_rise_s", 600), ("floor_fall_s", 600)):
            if getattr(self, name) > most:  # the pipeline keeps max_duration_ms of audio: bounded memory
                raise ValueError(f"{name} = {getattr(self, name)} must be at most {most}")


@dataclass(frozen=True)
class Burst:
    start: int
    """First sample of its first frame."""
    end: int
    """First sample after its last frame."""
    peak_dbfs: float
    """Its loudest frame's band energy, in dBFS."""


@dataclass(frozen=True)
class Sound:
    onset: int
    """First sample of the frame where the sound crossed the onset threshold."""
    offset: int
    """First sample after the sound's last loud frame."""
    peak_dbfs: float
    """Loudest band energy of the sound, in dBFS."""


class OnsetDetector:
    def __init__(self, sample_rate: int, settings: OnsetSettings | None = None) -> None:
        self.s = settings or OnsetSettings()
        self.sample_rate = sample_rate
        self.frame_samples = max(32, round(sample_rate * self.s.frame_ms / 1000))
        freqs = np.fft.rfftfreq(self.frame_samples, 1.0 / sample_rate)
        self._band = (freqs >= self.s.band_low_hz) & (freqs <= self.s.band_high_hz)
        if not self._band.any():
            raise ConfigError(f"[onset] band_low_hz-band_high_hz = {self.s.band_low_hz}-{self.s.band_high_hz} Hz holds no "
                              f"FFT bin of a {self.frame_samples}-sample frame at {sample_rate} Hz; widen the band")
        self._window = np.hanning(self.frame_samples).astype(np.float32)
        self._norm = float(np.sum(self._window**2) * self.frame_samples / 2)
        ms = sample_rate / 1000.0
        self._refractory = round(self.s.refractory_ms * ms)
        self._hangover = round(self.s.hangover_ms * ms)
        self._max_len = round(self.s.max_duration_ms * ms)
        self._min_gap = round(self.s.min_gap_ms * ms)
        frame_s = self.frame_samples / sample_rate
        self._rise = 1.0 - np.exp(-frame_s / self.s.floor_rise_s)
        self._fall = 1.0 - np.exp(-frame_s / self.s.floor_fall_s)
        self._levels_kept = 0  # frames of band energy remembered (see remember())
        self.reset()

    def reset(self) -> None:
        """Forget all state; sample positions restart at 0."""
        self.position = 0
        """Samples consumed into whole frames since the last reset."""
        self._pending = np.zeros(0, dtype=np.float32)
        self._floor: float | None = None
        self._prev_logspec: np.ndarray | None = None
        self._active: tuple[int, float] | None = None  # (onset sample, peak dB)
        self._last_loud = 0
        self._quiet_until = 0
        self._prev_levels = [-120.0, -120.0]
        self.level_dbfs = -120.0
        """Band energy of the latest frame, in dBFS."""
        self._levels: deque[float] = deque(maxlen=self._levels_kept)

    def remember(self, samples: int) -> None:
        """Keep the band energy of at least the last ``samples`` samples' frames (for :meth:`quiet_run`)."""
        kept = -(-samples // self.frame_samples)
        if kept > self._levels.maxlen:
            self._levels_kept = kept
            self._levels = deque(self._levels, maxlen=kept)

    def quiet_run(self, start: int, end: int, below_dbfs: float) -> int:
        """Samples in the longest run of whole frames within ``[start, end)`` whose band energy stayed below
        ``below_dbfs``; frames older than those remembered (see :meth:`remember`) never count as quiet."""
        _, lo, hi = self._frames(start, end)
        longest = run = 0
        for level in islice(self._levels, lo, max(lo, hi)):
            run = run + 1 if level < below_dbfs else 0
            longest = max(longest, run)
        return longest * self.frame_samples

    def _frames(self, start: int, end: int) -> tuple[int, int, int]:
        """``(first, lo, hi)``: the sample where the oldest remembered frame starts, and the indices of the remembered
        frames lying wholly in ``[start, end)`` (``lo`` to ``hi``, exclusive; empty when ``hi <= lo``)."""
        first = self.position - len(self._levels) * self.frame_samples
        lo = max(0, -(-(start - first) // self.frame_samples))
        hi = min(len(self._levels), (end - first) // self.frame_samples)
        return first, lo, hi

    def burst(self, start: int, end: int) -> Burst | None:
        """The loudest burst heard in ``[start, end)``: the whole remembered frame there with the most band energy,
        extended back (at most ``BURST_BACK_MS``, never before the remembered frames) and forward (never past
        ``end``) through the frames within ``BURST_WITHIN_DB`` of it. None when no remembered frame lies wholly in
        ``[start, end)``."""
        first, lo, hi = self._frames(start, end)
        if hi <= lo:
            return None
        levels = np.fromiter(islice(self._levels, 0, hi), dtype=np.float64, count=hi)
        peak = lo + int(np.argmax(levels[lo:hi]))
        floor = levels[peak] - BURST_WITHIN_DB
        back = max(0, peak - round(BURST_BACK_MS * self.sample_rate / 1000 / self.frame_samples))
        a = peak
        while a > back and levels[a - 1] >= floor:
            a -= 1
        b = peak + 1
        while b < hi and levels[b] >= floor:
            b += 1
        return Burst(first + a * self.frame_samples, first + b * self.frame_samples, float(levels[peak]))

    @property
    def unreported_from(self) -> int:
        """Every sound starting before this sample has been returned (a sound in progress started here)."""
        return self.position if self._active is None else self._active[0]

    @property
    def noise_floor_dbfs(self) -> float:
        return -120.0 if self._floor is None else self._floor

    def __call__(self, chunk: np.ndarray) -> list[Sound]:
        """Consume ``chunk`` (mono float32 in [-1, 1], any length); return the sounds that ended in it."""
        chunk = np.asarray(chunk, dtype=np.float32)
        if chunk.ndim != 1:
            raise ValueError(f"expected mono audio of shape [samples], got shape {chunk.shape}")
        data = np.concatenate([self._pending, chunk]) if self._pending.size else chunk
        n = data.size // self.frame_samples
        self._pending = data[n * self.frame_samples:].copy()
        out: list[Sound] = []
        for i in range(n):  # frame by frame: each frame's FFT is computed the same way whatever the chunking
            sound = self.process_frame(data[i * self.frame_samples: (i + 1) * self.frame_samples])
            if sound is not None:
                out.append(sound)
        return out

    def process_frame(self, frame: np.ndarray) -> Sound | None:
        """Advance by exactly one frame of ``frame_samples`` samples."""
        if frame.shape != (self.frame_samples,):
            raise ValueError(f"expected a frame of {self.frame_samples} samples "
                             f"({self.s.frame_ms} ms at {self.sample_rate} Hz), got shape {frame.shape}")
        power = np.abs(np.fft.rfft(frame * self._window)) ** 2 / self._norm
        band = power[self._band]
        return self._step(float(10 * np.log10(band.sum() + 1e-12)), 10 * np.log10(band + 1e-10))

    def _step(self, level: float, logspec: np.ndarray) -> Sound | None:
        start = self.position
        self.position += self.frame_samples
        flux = 0.0 if self._prev_logspec is None else float(np.maximum(logspec - self._prev_logspec, 0).mean())
        self._prev_logspec = logspec
        self.level_dbfs = level
        self._levels.append(level)
        if self._floor is None:
            self._floor = level
        floor = self._floor
        finished = None
        above = level >= floor + self.s.on_db and level >= self.s.min_level_dbfs and flux >= self.s.flux_db
        sudden = above and level - max(self._prev_levels) >= self.s.retrigger_db
        self._prev_levels = [self._prev_levels[1], level]
        if self._active is not None and sudden and start - self._active[0] >= self._min_gap:
            onset, peak = self._active  # a new sound starts on top of the current one: close it here
            finished = Sound(onset=onset, offset=start, peak_dbfs=peak)
            self._active = None
        if self._active is None:
            if above and (start >= self._quiet_until or sudden):
                self._active = (start, level)
                self._last_loud = self.position
            elif finished is None:
                rate = self._rise if level > floor else self._fall
                self._floor = floor + rate * (level - floor)
        else:
            onset, peak = self._active
            if level >= floor + self.s.off_db:
                self._last_loud = self.position
                self._active = (onset, max(peak, level))
            ended = self.position - self._last_loud >= self._hangover
            if ended or self.position - onset >= self._max_len:
                finished = Sound(onset=onset, offset=self._last_loud if ended else self.position, peak_dbfs=peak)
                self._active = None
                self._quiet_until = finished.offset + self._refractory
        return finished
