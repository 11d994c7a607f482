"""Recordings heard as the daemon hears them: placed in a room, onsets found by the daemon's own detector.

A *scene* is a stretch of stream around one recording. In the default ``context`` mode the recording
sits in a *room*: other recordings of the same split (speech, breathing, vowels; never the same group)
back to back with short cross-fades, normalised to one level, plus a faint white-noise floor. The room is
scaled so that the recording's loudest 10 ms frame is ``level_db`` above the room's RMS, ``level_db``
drawn uniformly from the configured range. When the recording came through a telephone (its manifest's
``original_sample_rate`` is 8000 Hz or less) the room is band-limited to 300-3400 Hz too, as the phone
would have heard it. ``zero`` (digital silence around the recording) and ``wrap`` (the recording looped)
remain for comparison.

Anchors are the onsets that :func:`edge.windows.find_sounds`, the daemon's detector, reports in the
scene from ``ONSET_TOLERANCE_S`` before the recording starts to its end, and windows are cut with
:func:`edge.windows.cut_window`, the function the daemon's ``Pipeline`` uses.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from edge.onset import OnsetSettings
from edge.windows import cut_window, find_sounds

from .augment import band_limit
from .data import Clip, ManifestError

MODES = ("context", "zero", "wrap")
ONSET_TOLERANCE_S = 0.3
"""An onset this many seconds before a recording starts still belongs to it (its window holds the recording)."""
FADE_S = 0.02
"""Cross-fade between room pieces, in seconds (an abrupt join would itself be an onset)."""
NOISE_BELOW_ROOM_DB = 30.0
"""The room's white-noise floor, in dB below the room's RMS: a microphone never records digital silence."""
SHIFT_AFTER_S = 0.6
"""A shifted window's anchor is at most this far, in seconds, after the onset it is shifted from (the recording's
later phases); before it, as far as the window still holds that onset."""
SHIFT_MARGIN_S = 0.1
"""...and at least this far, in seconds, before the onset's end of the window when shifted before it."""
SHIFT_TRIES = 20
"""Draws per shifted anchor before giving up on it (a recording whose onsets leave no room for one)."""
FRAME_S = 0.01
"""Frame of the level rule: a recording's level is its loudest 10 ms frame's RMS."""


@dataclass(frozen=True)
class ContextSettings:
    mode: str = "context"
    sample_rate: int = 16000
    """Hz."""
    level_min_db: float = 10.0
    """Lowest level of a recording's loudest 10 ms frame over the room's RMS, in dB."""
    level_max_db: float = 35.0
    """Highest such level, in dB."""
    before_s: float = 3.0
    """Room before the recording, in seconds (the onset detector's noise floor settles on it)."""
    after_s: float = 1.5
    """Room after the recording beyond the longest window, in seconds (its last sound ends in it)."""
    onset: OnsetSettings = OnsetSettings()


@dataclass
class Scene:
    audio: np.ndarray
    """The stream, float32 at the settings' sample rate."""
    start: int
    """First sample of the recording in ``audio``."""
    end: int
    """First sample after the recording."""
    level_db: float
    """The recording's loudest 10 ms frame over the room's RMS, in dB (nan without a room)."""


def frame_energy_db(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Power of each 10 ms frame, in dB re full scale (a recording shorter than a frame is one frame)."""
    frame = max(1, round(FRAME_S * sample_rate))
    n = max(1, audio.size // frame)
    frames = audio[: n * frame].reshape(n, frame) if audio.size >= frame else audio[None, :]
    return 10 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-12)


def loudest_frame_db(audio: np.ndarray, sample_rate: int) -> float:
    """RMS of the loudest 10 ms frame, in dB re full scale: the level rule of scenes and streams."""
    return float(frame_energy_db(audio, sample_rate).max())


def unit_rms(audio: np.ndarray) -> np.ndarray:
    """``audio`` scaled to an RMS of 1."""
    return audio / np.float32(np.sqrt(np.mean(audio.astype(np.float64) ** 2)) + 1e-9)


def is_telephone(clip: Clip) -> bool:
    """The manifest says the recording was made at 8 kHz or less (a telephone channel)."""
    try:
        return 0 < float(clip.extra.get("original_sample_rate") or 0) <= 8000
    except ValueError:
        return False


def seeded_rng(seed: int, *parts: object) -> np.random.Generator:
    """A generator that depends only on ``seed`` and ``parts`` (e.g. a clip's hash): order-independent."""
    digest = hashlib.sha256(":".join(str(p) for p in (seed, *parts)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))


@dataclass(frozen=True)
class RoomPiece:
    """One stretch of a room: ``length`` samples of ``clip`` from its sample ``offset``, laid from room sample
    ``start`` (cross-faded into its neighbours over ``FADE_S``)."""

    clip: Clip
    offset: int
    start: int
    length: int

    @property
    def group(self) -> str:
        """The recording's group (its speaker, for Coswara): the unit the room's recordings are chosen by."""
        return self.clip.group or self.clip.sha256


def room_pieces(pool: list[Clip], n: int, rng: np.random.Generator, sample_rate: int, *,
                exclude_group: str = "") -> list[RoomPiece]:
    """The recordings, and which stretch of each, that fill ``n`` samples of room, drawn from ``pool``."""
    candidates = [c for c in pool if (c.group or c.sha256) != exclude_group] or pool
    if not candidates:
        raise ManifestError("context needs room audio: no background recordings in this split "
                            "(give --data-background, or use --data-pad zero|wrap)")
    fade = max(1, round(FADE_S * sample_rate))
    pieces, pos = [], 0
    while pos < n:
        clip = candidates[int(rng.integers(len(candidates)))]
        offset = int(rng.integers(0, max(1, clip.audio.size - sample_rate)))
        length = min(clip.audio.size - offset, max(n - pos + fade, 4 * fade))
        if length <= 2 * fade:
            continue  # a recording shorter than two fades adds nothing
        pieces.append(RoomPiece(clip, offset, pos, length))
        pos += length - fade
    return pieces


def make_room(pool: list[Clip], n: int, rng: np.random.Generator, sample_rate: int, *,
              exclude_group: str = "", pieces: list[RoomPiece] | None = None) -> np.ndarray:
    """``n`` samples of room at RMS 1: random stretches of ``pool`` recordings, cross-faded, plus a noise floor.
    ``pieces``: lay these (:func:`room_pieces`, drawn from the same ``rng`` just before) instead of drawing them."""
    if pieces is None:
        pieces = room_pieces(pool, n, rng, sample_rate, exclude_group=exclude_group)
    fade = max(1, round(FADE_S * sample_rate))
    ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)
    room = np.zeros(n + 4 * fade, dtype=np.float32)
    for p in pieces:
        piece = unit_rms(p.clip.audio[p.offset: p.offset + p.length].astype(np.float32))
        piece[:fade] *= ramp
        piece[-fade:] *= ramp[::-1]
        room[p.start: p.start + p.length] += piece
    room = room[:n]
    room += rng.standard_normal(n).astype(np.float32) * np.float32(10 ** (-NOISE_BELOW_ROOM_DB / 20))
    return unit_rms(room)


class SceneMaker:
    """Builds the scene around a recording for one split (the room comes from that split's ``pool`` only)."""

    def __init__(self, settings: ContextSettings, pool: list[Clip], window_samples: int) -> None:
        if settings.mode not in MODES:
            raise ValueError(f"data.pad = {settings.mode!r} must be one of {', '.join(MODES)}")
        self.s, self.pool = settings, pool
        sr = settings.sample_rate
        self.before = round(settings.before_s * sr)
        self.after = window_samples + round(settings.after_s * sr)
        self.tolerance = round(ONSET_TOLERANCE_S * sr)

    def scene(self, clip: Clip, rng: np.random.Generator) -> Scene:
        audio, sr = clip.audio, self.s.sample_rate
        start, end = self.before, self.before + audio.size
        n = end + self.after
        if self.s.mode == "wrap":
            return Scene(audio[np.arange(-start, n - start) % audio.size].astype(np.float32), start, end, float("nan"))
        out = np.zeros(n, dtype=np.float32)
        level = float("nan")
        if self.s.mode == "context":
            level = float(rng.uniform(self.s.level_min_db, self.s.level_max_db))
            room = make_room(self.pool, n, rng, sr, exclude_group=clip.group or clip.sha256)
            if is_telephone(clip):
                room = unit_rms(band_limit(room, sr, 300.0, 3400.0))
            out += room * np.float32(10 ** ((loudest_frame_db(audio, sr) - level) / 20))
        out[start:end] += audio
        peak = float(np.abs(out).max())
        if peak > 0.99:
            out *= np.float32(0.99 / peak)
        return Scene(out, start, end, level)

    def split_anchors(self, scene: Scene) -> tuple[list[int], list[int]]:
        """The onsets the daemon's detector reports in the scene: those of the recording, and those of the room."""
        onsets = [s.onset for s in find_sounds(scene.audio, self.s.sample_rate, self.s.onset)]
        own = [o for o in onsets if scene.start - self.tolerance <= o < scene.end]
        return own, [o for o in onsets if o not in own] if self.s.mode == "context" else []

    def near_anchors(self, scene: Scene, room: list[int], n: int, window_samples: int, pre_roll_samples: int,
                     rng: np.random.Generator) -> list[int]:
        """``n`` anchors whose window holds the recording off its place: room onsets from ``window - pre_roll``
        before the recording to ``ONSET_TOLERANCE_S`` before it, or within ``pre_roll`` after its end; where the
        room has none, points drawn in the first span (``data.near_windows``)."""
        lo, hi = scene.start - (window_samples - pre_roll_samples) + 1, scene.start - self.tolerance
        if hi <= lo or n <= 0:
            return []
        near = [o for o in room if lo <= o < hi or scene.end <= o < scene.end + pre_roll_samples]
        return [near[int(rng.integers(len(near)))] if near else int(rng.integers(lo, hi)) for _ in range(n)]

    def shifted_anchors(self, own: list[int], onset: int, n: int, window_samples: int, pre_roll_samples: int,
                        rng: np.random.Generator, clear_s: float = 0.25) -> list[int]:
        """Up to ``n`` anchors shifted off ``onset`` (one of the recording's ``own`` onsets): from where the window
        holds it ``SHIFT_MARGIN_S`` before its end to ``SHIFT_AFTER_S`` after it, at least ``clear_s`` seconds from
        every ``own`` onset. These are the windows a detector scanning the stream scores beside a cough
        (``data.shifted_windows``)."""
        sr = self.s.sample_rate
        lo = onset - (window_samples - pre_roll_samples) + round(SHIFT_MARGIN_S * sr)
        hi, clear = onset + round(SHIFT_AFTER_S * sr), round(clear_s * sr)
        out: list[int] = []
        for _ in range(n * SHIFT_TRIES if hi > lo else 0):
            if len(out) == n:
                break
            a = int(rng.integers(lo, hi))
            if all(abs(a - o) >= clear for o in own):
                out.append(a)
        return out

    def windows(self, scene: Scene, anchors: list[int], window_samples: int, pre_roll_samples: int) -> np.ndarray:
        out = np.zeros((len(anchors), window_samples), dtype=np.float32)
        for i, a in enumerate(anchors):
            out[i] = cut_window(scene.audio, 0, a, window_samples, pre_roll_samples)
        return out
