"""`trainer stream`: the daemon's own ``Pipeline`` on held-out streams with sounds at known times and levels.

The builder takes one split (``test`` by default) of the given manifests, by the trainer's stable split
rule, so no recording in it was trained on or selected by any model trained with the same split seed
(``--data-split-seed``) and fractions. From each cough recording it cuts one *single cough* (:func:`single_event`), from each
non-cough recording one sound event by the same rule, and places them, shuffled, a few seconds apart into a
*room* made of other held-out non-cough recordings (other groups than the placed sounds). Each placed
sound's loudest 10 ms frame is a known number of dB above the room's RMS. The stream then runs through
``edge.pipeline.Pipeline`` in-process, exactly as `edge run` would process it, and the events are scored
against the truth (:func:`score_stream`).
"""
from __future__ import annotations

import csv
import hashlib
import math
import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edge.onset import OnsetSettings
from edge.settings import ModelSettings
from edge.verifier import AUTO

from . import data as D
from .augment import band_limit
from .context import (FADE_S, FRAME_S, ContextSettings, RoomPiece, SceneMaker, frame_energy_db, is_telephone,
                      loudest_frame_db, make_room, room_pieces, seeded_rng)

log = logging.getLogger(__name__)
TOLERANCE_BEFORE_S = 0.3
"""An event counts for a placed sound when its onset is at most this long before the sound's onset..."""
TOLERANCE_AFTER_S = 0.1
"""...and at most this long after the sound's end."""
EVENT_FLOOR_DB = 25.0
"""A single event spans the frames within this many dB of its loudest 10 ms frame, and at least half way (in dB)
from the recording's noise floor (its 10th-percentile frame) to that frame..."""
EVENT_GAP_S = 0.1
"""...and ends at the first stretch of this many seconds below that level (a gap between two coughs)."""
EVENT_MAX_S = 1.5
"""An event is cut at this length."""
DURATION_BINS_S = (0.1, 0.25, 0.5)
"""Edges, in seconds, of the bins of the placed coughs' single-event lengths that sensitivity is also given for:
the truth's event of a short, noisy recording is sometimes a brief spike that may not be the cough."""
BURST_QUIET_DB = 30.0
"""A single event holds a further explosive burst (the next cough of a rapid series, closer than ``EVENT_GAP_S``)
where its energy stays this many dB or more below the event's loudest 10 ms frame for ``BURST_QUIET_S``..."""
BURST_QUIET_S = 0.03
"""...seconds or longer (near silence: a cough's voiced phase follows its explosive phase without one)..."""
BURST_RISE_DB = 6.0
"""...and then, within ``BURST_RISE_S``, comes back to within this many dB of that frame."""
BURST_RISE_S = 0.05
"""How soon after the silence, in seconds, the burst must reach that level."""
TELEPHONE_MARGIN_S = 1.0
"""Room heard through the telephone band before and after a telephone recording, in seconds."""
BOUT_PAUSE_S = (0.1, 0.3)
"""Range of the pause, in seconds, between the end of a bout's cough and the onset of the next (an inhalation)."""
NEXT_TO_S = 1.0
"""A background event this close to a placed cough's span, in seconds, is counted as next to it."""
FEW_ROOM_SPEAKERS = 10
"""A threshold sweep whose validation room holds fewer speakers than this says that its background rate is rough."""


CHANNELS = ("all", "wideband", "telephone")
"""Values of ``stream.channel``."""
FALSE_WHERE = ("all", "wideband")
"""Values of ``stream.max_false_where``."""
CUTS = ("event", "first_cough")
"""Values of ``stream.cut``."""
SOUND_CUTS = ("event", "whole")
"""Values of ``stream.sound_cut``."""
UNSEEN = "_unseen"
"""Key of ``Clip.extra`` that marks a recording of ``stream.unseen``: placed, whichever split, never the room."""


@dataclass(frozen=True)
class StreamSettings:
    coughs: str = ""
    """Manifest(s) of cough recordings, comma-separated."""
    cough_labels: str = ""
    """Labels of ``coughs`` rows that are coughs, comma-separated (empty = every row)."""
    sounds: str = ""
    """Manifest(s) of non-cough recordings, comma-separated: placed as sounds, and (other groups) the room."""
    sound_labels: str = ""
    """Labels of ``sounds`` rows to use, comma-separated (empty = every row not among ``cough_labels``)."""
    unseen: str = ""
    """Manifest(s) of non-cough recordings that no model was trained on or selected with (packages that are not in
    any training data, e.g. `trainer negatives --only-hints`' vocal sounds), comma-separated: every row is placed as a
    sound, whichever split, and never made the room."""
    split: str = "test"
    """Which split of the manifests the stream is made of: ``test`` or ``val``."""
    seed: int = 0
    """Seed of the split (`trainer distill`'s ``--data-split-seed``) and of the stream's layout."""
    val_fraction: float = 0.15
    """As in `trainer distill`: the split must be the models' own."""
    test_fraction: float = 0.15
    """As in `trainer distill`."""
    levels_db: str = "10,15,20,25,30,35"
    """Levels of the placed sounds' loudest 10 ms frame over the room's RMS, in dB, comma-separated (cycled)."""
    room_dbfs: float = -45.0
    """RMS of the room, in dBFS."""
    gap_min_s: float = 2.5
    """Shortest room between two placed sounds, in seconds."""
    gap_max_s: float = 5.0
    """Longest room between two placed sounds, in seconds."""
    room_share: float = 0.4
    """Share of the non-cough recordings' groups that make the room instead of being placed."""
    group_by: str = "source"
    """Column whose values the classifier's ROC-AUC is also reported for."""
    sound_class_by: str = "label"
    """Column that names a placed non-cough sound's class in the report (e.g. ``sound_hint`` for the manifest of
    `trainer negatives`); a row with no value there is named by its label."""
    synthetic_per_kind: int = 0
    """Also place this many synthetic sounds of each kind (white-noise bursts, claps, square-wave tones;
    ``trainer.synthetic``), never part of the room."""
    room_labels: str = ""
    """Classes of ``sounds`` rows the room may be made of, comma-separated (empty = any): each row's class is its
    ``sound_class_by`` column, its label where that is empty (as the report names placed sounds). E.g. speech and
    breathing only, while effects and laughter are placed as sounds."""
    bout_share: float = 0.0
    """Share of the placed coughs that follow another as the next cough of a bout: right after its leader (a cough
    of the same channel placed on its own), after a pause drawn in ``BOUT_PAUSE_S``, at the leader's level."""
    channel: str = "all"
    """Which cough recordings are placed: ``all``; ``wideband`` (none that came through a telephone: what a
    microphone hears, and the room never passes the telephone band); or ``telephone`` only."""
    cut: str = "event"
    """What of each cough recording is placed: ``event``, the truth's single event (:func:`single_event`), which may
    hold a second explosive cough too close behind to part (``Placed.bursts``); or ``first_cough``, that event up to
    the start of its second explosive burst (:func:`explosive_bursts`), so that each placed cough is one."""
    sound_cut: str = "event"
    """What of each non-cough recording is placed: ``event``, its loudest single event (:func:`single_event`, as for
    a cough), or the ``whole`` recording (a laugh's every burst, a scream's whole length)."""
    repeats: int = 1
    """Place each held-out cough this many times, at successive levels of ``levels_db`` (each at another level while
    ``repeats`` is at most their number): every level then hears the same recordings, and the figures by level
    differ by level alone. Non-cough sounds are placed once."""
    unseen_repeats: int = 1
    """Place each ``unseen`` recording this many times, at successive levels of ``levels_db`` (as ``repeats`` places
    the coughs), so that each of them is heard at every level."""
    max_false_per_hour: float = 10.0
    """With ``--choose-detector-threshold``: the most background events per hour the chosen threshold may raise."""
    max_false_where: str = "all"
    """Where those background events are counted: ``all`` of the stream, or only where the room is heard
    ``wideband``, as a microphone hears it (the stretches around telephone recordings, where the room passes the
    telephone band as no microphone would, left out; ``background_by_band``)."""

    def validate(self, splits: tuple[str, ...] = ("test", "val")) -> "StreamSettings":
        """The settings, checked; ``splits``: the splits a stream may be made of (`trainer mine` alone takes
        ``train``)."""
        if not math.isfinite(self.max_false_per_hour) or self.max_false_per_hour < 0:
            raise ValueError(f"stream.max_false_per_hour = {self.max_false_per_hour} must be a finite number >= 0")
        if not self.coughs:
            raise ValueError("stream.coughs is required (--stream-coughs MANIFEST)")
        if not self.sounds:
            raise ValueError("stream.sounds is required (--stream-sounds MANIFEST): the room is made of them")
        if self.split not in splits:
            raise ValueError(f"stream.split = {self.split!r} must be {' or '.join(splits)}")
        if self.split == "train" and self.unseen:
            raise ValueError("stream.unseen must be empty on a training-split stream: its recordings would be mined "
                             "into training data, and no model could be scored on them as unseen any more")
        if not 0 < self.gap_min_s <= self.gap_max_s:
            raise ValueError(f"stream.gap_min_s = {self.gap_min_s} must be > 0 and <= gap_max_s = {self.gap_max_s}")
        if not 0 <= self.synthetic_per_kind <= 10_000:
            raise ValueError(f"stream.synthetic_per_kind = {self.synthetic_per_kind} must be in 0..10000")
        if not 0 <= self.bout_share <= 0.5:
            raise ValueError(f"stream.bout_share = {self.bout_share} must be in [0, 0.5] (a follower needs a leader)")
        if self.channel not in CHANNELS:
            raise ValueError(f"stream.channel = {self.channel!r} must be one of {', '.join(CHANNELS)}")
        if self.cut not in CUTS:
            raise ValueError(f"stream.cut = {self.cut!r} must be one of {', '.join(CUTS)}")
        if self.sound_cut not in SOUND_CUTS:
            raise ValueError(f"stream.sound_cut = {self.sound_cut!r} must be one of {', '.join(SOUND_CUTS)}")
        if self.max_false_where not in FALSE_WHERE:
            raise ValueError(f"stream.max_false_where = {self.max_false_where!r} must be one of {', '.join(FALSE_WHERE)}")
        if not 1 <= self.repeats <= 100:
            raise ValueError(f"stream.repeats = {self.repeats} must be in 1..100")
        if not 1 <= self.unseen_repeats <= 100:
            raise ValueError(f"stream.unseen_repeats = {self.unseen_repeats} must be in 1..100")
        if not 0 < self.room_share < 1:
            raise ValueError(f"stream.room_share = {self.room_share} must be in (0, 1)")
        try:
            levels = [float(x) for x in self.levels_db.split(",")]
        except ValueError:
            levels = []
        if not levels:
            raise ValueError(f"stream.levels_db = {self.levels_db!r} must be comma-separated numbers")
        return self

    @property
    def levels(self) -> list[float]:
        return [float(x) for x in self.levels_db.split(",")]


@dataclass
class Placed:
    """One sound placed into the stream: the truth an event is scored against."""

    kind: str
    """``cough`` or ``sound``."""
    cls: str
    """The recording's label (e.g. ``positive``/``negative`` for covid19-cough, ``breathing`` for Coswara)."""
    group: str
    """The recording's value of ``group_by`` (e.g. its source)."""
    path: str
    level_db: float
    """Its loudest 10 ms frame over the room's RMS, in dB."""
    onset: int
    """Sample of the stream where the sound starts."""
    end: int
    """First sample after it."""
    telephone: bool = False
    """A telephone recording: the room around it, ``TELEPHONE_MARGIN_S`` either side, passes the telephone band."""
    follows: bool = False
    """The next cough of a bout: it starts ``BOUT_PAUSE_S`` after the end of the cough placed before it."""
    bursts: tuple[int, ...] = (0,)
    """Where the placed event's explosive bursts start, in samples from ``onset`` (:func:`explosive_bursts`): more
    than one where a recording's coughs came too close together for :func:`single_event` to part them."""


def single_event(audio: np.ndarray, sample_rate: int) -> tuple[int, int]:
    """``(start, end)`` of a recording's loudest event, in samples: the truth's unit of one cough.

    From the loudest 10 ms frame, back to the first frame of the run of frames within ``EVENT_FLOOR_DB`` of it
    (at most 0.3 s back), and forward until ``EVENT_GAP_S`` of frames below that level or ``EVENT_MAX_S``. A
    cough's explosive, intermediate and voiced phases follow each other without such a gap, so they stay
    one event; the next cough of a bout starts after one, so it is not part of it. Two coughs less than
    0.1 s apart would count as one.
    """
    frame = round(FRAME_S * sample_rate)
    energy = frame_energy_db(audio, sample_rate)
    n = energy.size
    peak = int(energy.argmax())
    floor = float(np.percentile(energy, 10))
    loud = energy >= max(energy[peak] - EVENT_FLOOR_DB, (floor + energy[peak]) / 2)
    first = peak
    while first > 0 and loud[first - 1] and peak - first < round(0.3 / FRAME_S):
        first -= 1
    gap, last, quiet = round(EVENT_GAP_S / FRAME_S), peak, 0
    for i in range(peak + 1, min(n, first + round(EVENT_MAX_S / FRAME_S))):
        quiet = 0 if loud[i] else quiet + 1
        if quiet >= gap:
            break
        if loud[i]:
            last = i
    return first * frame, (last + 1) * frame


def explosive_bursts(audio: np.ndarray, sample_rate: int, start: int, end: int) -> tuple[int, ...]:
    """Where the explosive bursts of ``audio[start:end]`` (a :func:`single_event`) start, in samples from ``start``:
    0, and each return to within ``BURST_RISE_DB`` of its loudest 10 ms frame, within ``BURST_RISE_S``, after
    ``BURST_QUIET_S`` or more of frames ``BURST_QUIET_DB`` or more below it (near silence), once a frame has
    reached that level before. A cough's voiced phase never counts: it does not come back that loud after a
    silence. The truth's own rule, for the figures that count such a burst as a cough, not the daemon's.
    """
    frame = round(FRAME_S * sample_rate)
    energy = frame_energy_db(audio[start:end], sample_rate)
    top = float(energy.max())
    quiet_frames, rise_frames = round(BURST_QUIET_S / FRAME_S), round(BURST_RISE_S / FRAME_S)
    loud = energy >= top - BURST_RISE_DB
    starts, quiet, heard = [0], 0, False
    for i, level in enumerate(energy):
        if level <= top - BURST_QUIET_DB:
            quiet += 1
            continue
        if heard and quiet >= quiet_frames and loud[i: i + rise_frames].any():
            starts.append(i * frame)
        heard, quiet = heard or bool(loud[i]), 0
    return tuple(starts)


@dataclass
class Room:
    """What a stream's room is made of."""

    clips: list[D.Clip]
    """The recordings it draws on (their groups are never placed as sounds)."""
    pieces: list[RoomPiece]
    """The stretches of them it holds, in order (:func:`trainer.context.room_pieces`)."""


@dataclass
class Item:
    clip: D.Clip
    kind: str
    level_db: float | None = None
    """Its level over the room, where fixed in advance (a repeated cough); None: the next of the cycle."""
    follows: bool = False
    """The next cough of a bout: placed right after the item before it, at its level."""


def held_out(manifests: str, labels: str, s: StreamSettings, sample_rate: int, exclude: set[str] = frozenset()):
    """The rows of ``manifests`` with ``labels`` that fall in ``s.split``, decoded."""
    wanted = {x for x in labels.split(",") if x}
    clips = [c for c in D.load_manifests(manifests) if (not wanted or c.label in wanted) and c.label not in exclude]
    clips = D.load_audio(clips, sample_rate, min_samples=sample_rate // 4)
    return [c for c in clips if D.split_of(c.group or c.sha256, val=s.val_fraction, test=s.test_fraction,
                                           seed=s.seed) == s.split]


def build_stream(coughs: list[D.Clip], sounds: list[D.Clip], s: StreamSettings, sample_rate: int,
                 group_by: str = "") -> tuple[np.ndarray, list[Placed], Room]:
    """The stream, its truth, and what its room is made of (deterministic by ``s.seed``)."""
    rng = seeded_rng(s.seed, "stream", s.split)
    room_labels = {x for x in s.room_labels.split(",") if x}
    may_be_room = [c for c in sounds if not c.extra.get(UNSEEN)
                   and (not room_labels or _class_of(Item(c, "sound"), s.sound_class_by) in room_labels)]
    groups = sorted({c.group or c.sha256 for c in may_be_room})
    room_groups = {g for g in groups if seeded_rng(s.seed, "room", g).random() < s.room_share}
    room = [c for c in may_be_room if (c.group or c.sha256) in room_groups]
    placed_sounds = [c for c in sounds if (c.group or c.sha256) not in room_groups]
    if not room:
        raise D.ManifestError(f"no non-cough recordings left for the room in the {s.split} split")
    from .synthetic import synthetic_clips

    synthetic = synthetic_clips(s.synthetic_per_kind, sample_rate, s.seed, s.split)
    items = _cough_items(coughs, s) + _sound_items(placed_sounds, s) + [Item(c, "sound") for c in synthetic]
    items = _into_bouts([items[i] for i in rng.permutation(len(items))], s.bout_share, rng)
    level_of = {kind: iter(s.levels * (len(items) // len(s.levels) + 1)) for kind in ("cough", "sound")}
    excerpts, t, truth = [], round(s.gap_max_s * sample_rate), []
    margin = round(0.05 * sample_rate)
    for item in items:
        lo, hi, limit, bursts = _event_span(item, s.cut, s.sound_cut, sample_rate)
        a, b = max(0, lo - margin), min(limit, hi + margin)
        if item.follows:  # the excerpt's event starts a pause after the leader's event ends
            t = truth[-1].end + round(rng.uniform(*BOUT_PAUSE_S) * sample_rate) - (lo - a)
        level = truth[-1].level_db if item.follows else \
            next(level_of[item.kind]) if item.level_db is None else item.level_db
        excerpts.append((t, item.clip.audio[a:b].copy()))
        truth.append(Placed(item.kind, _class_of(item, s.sound_class_by), item.clip.column(group_by) if group_by
                            else "", str(item.clip.path), level, t + lo - a, t + hi - a, is_telephone(item.clip),
                            item.follows, bursts))
        t += (b - a) + round(rng.uniform(s.gap_min_s, s.gap_max_s) * sample_rate)
    n = t + round(s.gap_max_s * sample_rate)
    pieces = room_pieces(room, n, rng, sample_rate)
    stream = make_room(room, n, rng, sample_rate, pieces=pieces)
    _telephone_segments(stream, truth, sample_rate)
    stream *= np.float32(10 ** (s.room_dbfs / 20))
    for (start, audio), p in zip(excerpts, truth):
        audio = _faded(audio.astype(np.float32), sample_rate)
        gain = 10 ** ((s.room_dbfs + p.level_db - loudest_frame_db(audio, sample_rate)) / 20)
        stream[start: start + audio.size] += audio * np.float32(gain)
    return np.clip(stream, -1.0, 1.0), truth, Room(room, pieces)


def _sound_items(sounds: list[D.Clip], s: StreamSettings) -> list[Item]:
    """Each placed sound once, its level the next of the cycle; each ``unseen`` one ``s.unseen_repeats`` times, at
    successive levels (as :func:`_cough_items`)."""
    if s.unseen_repeats == 1:
        return [Item(c, "sound") for c in sounds]
    return [Item(c, "sound") for c in sounds if not c.extra.get(UNSEEN)] + \
        _at_levels([c for c in sounds if c.extra.get(UNSEEN)], "sound", s.unseen_repeats, s.levels)


def _event_span(item: Item, cut: str, sound_cut: str, sample_rate: int) -> tuple[int, int, int, tuple[int, ...]]:
    """``(start, end)`` of what is placed of ``item``'s recording as its event (``StreamSettings.cut`` for a cough,
    ``sound_cut`` for a sound), the sample its excerpt may reach at most, and where the event's explosive bursts
    start (a cough's; ``(0,)`` for a sound)."""
    size = item.clip.audio.size
    if item.kind != "cough" and sound_cut == "whole":
        return 0, size, size, (0,)
    lo, hi = single_event(item.clip.audio, sample_rate)
    if item.kind != "cough":
        return lo, hi, size, (0,)
    bursts = explosive_bursts(item.clip.audio, sample_rate, lo, hi)
    if cut == "first_cough" and len(bursts) > 1:
        return lo, lo + bursts[1], lo + bursts[1], (0,)  # up to the second cough, none of which is placed
    return lo, hi, size, bursts


def _into_bouts(items: list[Item], share: float, rng: np.random.Generator) -> list[Item]:
    """``items`` in order, where each cough drawn with probability ``share`` leaves its place to follow a cough of
    the same channel that stays on its own (the next such leader down the list; none left: it stays put)."""
    if not share:
        return items
    follower = [it.kind == "cough" and rng.random() < share for it in items]
    leaders = [i for i, it in enumerate(items) if it.kind == "cough" and not follower[i]]
    after: dict[int, Item] = {}
    for i, it in enumerate(items):
        if not follower[i]:
            continue
        lead = next((j for j in leaders if j not in after
                     and is_telephone(items[j].clip) == is_telephone(it.clip)), None)
        if lead is None:
            follower[i] = False
        else:
            after[lead] = replace(it, follows=True)
    out = []
    for i, it in enumerate(items):
        if not follower[i]:
            out += [it] + ([after[i]] if i in after else [])
    return out


def _cough_items(coughs: list[D.Clip], s: StreamSettings) -> list[Item]:
    """Each cough once, its level the next of the cycle; with ``s.repeats`` > 1, each ``repeats`` times at successive
    levels (cough ``i``'s copy ``j`` at level ``i + j`` of the cycle), so every level hears the same recordings."""
    if s.repeats == 1:
        return [Item(c, "cough") for c in coughs]
    return _at_levels(coughs, "cough", s.repeats, s.levels)


def _at_levels(clips: list[D.Clip], kind: str, repeats: int, levels: list[float]) -> list[Item]:
    """Each clip ``repeats`` times, clip ``i``'s copy ``j`` at level ``i + j`` of the cycle ``levels``."""
    return [Item(c, kind, levels[(i + j) % len(levels)]) for i, c in enumerate(clips) for j in range(repeats)]


def _class_of(item: Item, column: str) -> str:
    """A placed sound's class in the report: a synthetic one's kind, else ``column`` (the label where empty)."""
    from .synthetic import LABEL

    if item.kind == "cough":
        return item.clip.label
    if item.clip.label == LABEL:
        return item.clip.extra["sound_hint"]
    return item.clip.extra.get(column) or item.clip.label


def _faded(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    fade = min(audio.size // 2, round(0.005 * sample_rate))
    if fade:
        ramp = np.linspace(0, 1, fade, dtype=np.float32)
        audio[:fade] *= ramp
        audio[-fade:] *= ramp[::-1]
    return audio


def _telephone_segments(stream: np.ndarray, truth: list[Placed], sample_rate: int) -> None:
    """Around a telephone recording the room is heard through the same 300-3400 Hz channel (as in training)."""
    fade = round(FADE_S * sample_rate)
    for lo, hi in telephone_spans(truth, stream.size, sample_rate):
        seg = band_limit(stream[lo:hi], sample_rate, 300.0, 3400.0)
        seg *= np.float32(np.sqrt(np.mean(stream[lo:hi] ** 2) / (np.mean(seg**2) + 1e-12)))
        w = np.ones(hi - lo, dtype=np.float32)
        w[:fade], w[-fade:] = np.linspace(0, 1, fade), np.linspace(1, 0, fade)
        stream[lo:hi] = w * seg + (1 - w) * stream[lo:hi]


def telephone_spans(truth: list[Placed], n_samples: int, sample_rate: int) -> list[tuple[int, int]]:
    """The stretches of the stream heard through the telephone band: around each telephone recording."""
    margin = round(TELEPHONE_MARGIN_S * sample_rate)
    return [(max(0, p.onset - margin), min(n_samples, p.end + margin)) for p in truth if p.telephone]


@dataclass
class StreamEvent:
    onset: int
    """Onset sample in the stream."""
    cough_score: float
    positive_score: float
    """The classifier's probability of its positive label."""


def match_events(truth: list[Placed], onsets: list[int], sample_rate: int) -> list[list[int]]:
    """For each placed sound, the indices of the onsets in its span [onset - 0.3 s, end + 0.1 s]; an onset in two
    spans (the coughs of a bout) counts for the sound whose onset is nearest it only."""
    before, after = round(TOLERANCE_BEFORE_S * sample_rate), round(TOLERANCE_AFTER_S * sample_rate)
    at = np.array(onsets, dtype=np.int64)
    spans = [np.flatnonzero((at >= p.onset - before) & (at <= p.end + after)) for p in truth]
    owner: dict[int, int] = {}
    for k, idx in enumerate(spans):
        for i in idx.tolist():
            if i not in owner or abs(at[i] - truth[k].onset) < abs(at[i] - truth[owner[i]].onset):
                owner[i] = k
    return [[i for i in idx.tolist() if owner[i] == k] for k, idx in enumerate(spans)]


def score_stream(truth: list[Placed], events: list[StreamEvent], n_samples: int, sample_rate: int, *,
                 class_labels: tuple[str, ...] = (), positive_label: str = "",
                 levels: list[float] | None = None, room: list[RoomPiece] | None = None) -> dict:
    """Detection and classification figures of ``events`` against the placed ``truth`` (pure); with the ``room``'s
    pieces, the background events far from coughs by the room's group (speaker) too."""
    hits = match_events(truth, [e.onset for e in events], sample_rate)
    matched = np.zeros(len(events), dtype=bool)
    for idx in hits:
        matched[idx] = True
    coughs = [(p, h) for p, h in zip(truth, hits) if p.kind == "cough"]
    sounds = [(p, h) for p, h in zip(truth, hits) if p.kind == "sound"]
    detected = [(p, h) for p, h in coughs if h]
    background = [e.onset for e, m in zip(events, matched) if not m]
    errors = [abs(events[h[0]].onset - p.onset) / sample_rate * 1000 for p, h in detected]
    hours = n_samples / sample_rate / 3600
    out = {
        "duration_s": round(n_samples / sample_rate, 1),
        "coughs": _rate(coughs),
        "coughs_by_level": {f"{lvl:g}": _rate([(p, h) for p, h in coughs if p.level_db == lvl])
                            for lvl in (levels or sorted({p.level_db for p, _ in coughs}))},
        "coughs_by_group": {g: _rate([(p, h) for p, h in coughs if p.group == g])
                            for g in sorted({p.group for p, _ in coughs}) if g},
        "coughs_by_duration": _by_duration(coughs, sample_rate),
        "events_per_detected_cough": (sum(len(h) for _, h in detected) / len(detected)) if detected else None,
        **_burst_counts(detected, coughs, [e.onset for e in events]),
        **_bout_rates(truth, hits),
        "sounds": _rate(sounds),
        "sounds_by_class": {c: _rate([(p, h) for p, h in sounds if p.cls == c]) for c in sorted({p.cls for p, _ in sounds})},
        "background_events": int((~matched).sum()),
        "background_events_per_hour": float((~matched).sum() / hours) if hours else None,
        **_background_near_coughs(truth, background, n_samples, sample_rate),
        "background_by_band": _background_by_band(truth, background, n_samples, sample_rate),
        "onset_error_ms": {"median": float(np.median(errors)), "p95": float(np.percentile(errors, 95))} if errors else None,
    }
    if room:
        out["background_by_room"] = _background_by_room(truth, background, room, n_samples, sample_rate)
    if positive_label:
        labelled = [(p, h) for p, h in coughs if p.cls in class_labels]
        out["classifier_on_events"] = _event_auc(labelled, events, positive_label)
    return out


def _by_duration(coughs: list, sample_rate: int) -> dict:
    """Sensitivity by the length of the placed cough's single event (``DURATION_BINS_S``), keyed ``"lo-hi"`` in
    seconds."""
    edges = (0.0, *DURATION_BINS_S, math.inf)
    out = {}
    for lo, hi in zip(edges, edges[1:]):
        part = [(p, h) for p, h in coughs if lo < (p.end - p.onset) / sample_rate <= hi]
        out[f"{lo:g}-{hi:g}"] = _rate(part)
    return out


def _burst_counts(detected: list, coughs: list, onsets: list[int]) -> dict:
    """The figures that count each explosive burst of a placed cough (``Placed.bursts``) as a cough: each event is
    on the burst whose start is nearest it; events per burst heard, over the detected coughs; the share of all
    bursts heard; and how many placed coughs hold more than one burst, with their bursts and events."""
    def heard(p: Placed, h: list[int]) -> int:
        starts = np.array(p.bursts) + p.onset
        return len({int(np.abs(starts - onsets[i]).argmin()) for i in h})

    bursts = sum(len(p.bursts) for p, _ in coughs)
    told = sum(heard(p, h) for p, h in detected)
    multi = [(p, h) for p, h in coughs if len(p.bursts) > 1]
    return {"events_per_detected_cough_by_burst": sum(len(h) for _, h in detected) / told if told else None,
            "bursts_heard": {"n": bursts, "with_event": told, "share": told / bursts if bursts else None},
            "coughs_with_bursts": {"n": len(multi), "bursts": sum(len(p.bursts) for p, _ in multi),
                                   "heard": sum(heard(p, h) for p, h in multi if h),
                                   "events": sum(len(h) for _, h in multi)}}


def _bout_rates(truth: list[Placed], hits: list[list[int]]) -> dict:
    """With bouts placed: sensitivity for their first coughs and for the coughs that follow, each on its own."""
    nxt = [k for k, p in enumerate(truth) if p.follows]
    if not nxt:
        return {}
    return {"coughs_in_bouts": {"first": _rate([(truth[k - 1], hits[k - 1]) for k in nxt]),
                                "next": _rate([(truth[k], hits[k]) for k in nxt])}}


def _background_near_coughs(truth: list[Placed], onsets: list[int], n_samples: int, sample_rate: int) -> dict:
    """Background events within ``NEXT_TO_S`` of a placed cough's span (a window cut at a room sound there holds
    the cough off its place, so a detector that answers for any cough in its window fires on it), and the rate of
    the others per hour of the stream farther from every cough."""
    spans = _cough_reach(truth, n_samples, sample_rate)
    near = _within(onsets, spans)
    hours = (n_samples - _covered(spans)) / sample_rate / 3600
    return {"background_next_to_coughs": near,
            "background_away_from_coughs_per_hour": (len(onsets) - near) / hours if hours > 0 else None}


def _cough_reach(truth: list[Placed], n_samples: int, sample_rate: int) -> list[tuple[int, int]]:
    """Each placed cough's span widened by ``NEXT_TO_S`` either side: where a background event is next to a cough."""
    reach = round(NEXT_TO_S * sample_rate)
    return [(max(0, p.onset - reach), min(n_samples, p.end + reach)) for p in truth if p.kind == "cough"]


def room_false_alarms(truth: list[Placed], onsets: list[int], room: list[RoomPiece], n_samples: int,
                      sample_rate: int) -> list[tuple[int, int]]:
    """Of the background event ``onsets``, those farther than ``NEXT_TO_S`` from every placed cough (the room's own
    false alarms), each with the index of the ``room`` piece heard where it starts (each piece owns the room from
    its start to the next piece's)."""
    near = _cough_reach(truth, n_samples, sample_rate)
    starts = np.array([p.start for p in room], dtype=np.int64)
    return [(x, int(np.searchsorted(starts, x, side="right")) - 1) for x in onsets if not _within([x], near)]


def _background_by_room(truth: list[Placed], onsets: list[int], room: list[RoomPiece], n_samples: int,
                        sample_rate: int) -> dict:
    """The room's own false alarms (:func:`room_false_alarms`) by the room group (speaker) heard there, over that
    group's share of the stream farther from every cough; and their rate per hour with a bootstrap 95% interval over
    the room's groups (the room repeats a few speakers' recordings, so one speaker's habits can make most of it)."""
    from .metrics import cluster_ratio_ci

    near = _cough_reach(truth, n_samples, sample_rate)
    groups = sorted({p.group for p in room})
    index = [groups.index(p.group) for p in room]
    events, seconds = np.zeros(len(groups)), np.zeros(len(groups))
    ends = [p.start for p in room[1:]] + [n_samples]
    for k, (piece, hi) in enumerate(zip(room, ends)):
        hi = min(hi, n_samples)
        if hi > piece.start:
            seconds[index[k]] += (hi - piece.start - _overlap(piece.start, hi, near)) / sample_rate
    for _, k in room_false_alarms(truth, onsets, room, n_samples, sample_rate):
        events[index[k]] += 1
    rate = events.sum() / seconds.sum() * 3600 if seconds.sum() > 0 else None
    return {"per_hour": rate, "ci95": cluster_ratio_ci(events, seconds / 3600),
            "groups": {g: {"events": int(e), "minutes": s / 60, "per_hour": e / s * 3600 if s > 0 else None}
                       for g, e, s in zip(groups, events, seconds)},
            "repetition": room_repetition(room, n_samples, sample_rate)}


def room_repetition(room: list[RoomPiece], n_samples: int, sample_rate: int) -> dict:
    """How much distinct audio the room holds: its speakers (groups), recordings, their length in minutes (all of
    each recording it draws on), and how many times over the stream plays that much room. A room of a few short recordings replays
    each spot many times, and a spot that raises an event raises one each time it recurs."""
    used = {str(p.clip.path): p.clip.audio.size for p in room}
    distinct_s = sum(used.values()) / sample_rate
    return {"speakers": len({p.group for p in room}), "recordings": len(used), "distinct_minutes": distinct_s / 60,
            "times_heard": n_samples / sample_rate / distinct_s if distinct_s else None}


def _overlap(lo: int, hi: int, spans: list[tuple[int, int]]) -> int:
    """Samples of ``[lo, hi)`` inside the union of ``spans``."""
    return _covered([(max(lo, a), min(hi, b)) for a, b in spans if a < hi and b > lo])


def _within(onsets: list[int], spans: list[tuple[int, int]]) -> int:
    """How many of ``onsets`` lie in any of the ``[lo, hi)`` sample ``spans``."""
    return sum(any(lo <= x < hi for lo, hi in spans) for x in onsets)


def _covered(spans: list[tuple[int, int]]) -> int:
    """Samples in the union of the ``[lo, hi)`` ``spans`` (those of a bout's coughs overlap)."""
    total, end = 0, 0
    for lo, hi in sorted(spans):
        lo = max(lo, end)
        if hi > lo:
            total, end = total + hi - lo, hi
    return total


def _background_by_band(truth: list[Placed], onsets: list[int], n_samples: int, sample_rate: int) -> dict:
    """Background events per hour where the room passes the telephone band (around telephone recordings) and
    elsewhere: a detector that hears the channel, not the sound, fires in the former."""
    spans = telephone_spans(truth, n_samples, sample_rate)
    inside = _within(onsets, spans)
    hours_in = _covered(spans) / sample_rate / 3600
    hours_out = n_samples / sample_rate / 3600 - hours_in
    return {"telephone": {"events": inside, "hours": hours_in, "per_hour": inside / hours_in if hours_in else None},
            "wideband": {"events": len(onsets) - inside, "hours": hours_out,
                         "per_hour": (len(onsets) - inside) / hours_out if hours_out > 0 else None}}


def _rate(pairs: list) -> dict:
    """Share of placed sounds with an event, and its 95% interval: Wilson where each recording is placed once (one
    trial each), else a bootstrap over recordings (the placements of one recording are not independent)."""
    from .metrics import cluster_share_ci, wilson_ci

    n, hit = len(pairs), sum(1 for _, h in pairs if h)
    paths = [p.path for p, _ in pairs]
    ci = wilson_ci(hit, n) if len(set(paths)) == n else cluster_share_ci([bool(h) for _, h in pairs], paths)
    return {"n": n, "with_event": hit, "share": hit / n if n else None, "ci95": ci}


AUC_BOOTSTRAP = 1000
"""Resamples of the percentile 95% intervals of the classifier's ROC-AUC (seed 0: the same for every run)."""


def _auc(labels: list[bool], scores: list[float]) -> float | None:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores)) if 0 < sum(labels) < len(labels) else None


def _auc_figures(labels: list[bool], scores: list[float]) -> dict:
    """ROC-AUC and its bootstrap 95% interval (None where one class is missing)."""
    from .metrics import bootstrap_auc_ci

    auc = _auc(labels, scores)
    ci = bootstrap_auc_ci(np.array(labels, dtype=bool), np.array(scores, dtype=float), AUC_BOOTSTRAP, 0) \
        if auc is not None else None
    return {"roc_auc": auc, "roc_auc_ci95": ci}


def _event_auc(coughs: list, events: list[StreamEvent], positive_label: str) -> dict:
    """ROC-AUC of the classifier on every event it published on a cough whose recording carries a label."""
    rows = [(p.cls == positive_label, events[i].positive_score, p.group) for p, h in coughs for i in h]
    pooled = _auc_figures([r[0] for r in rows], [r[1] for r in rows])
    out = {"events": len(rows), "pooled": pooled["roc_auc"], "pooled_ci95": pooled["roc_auc_ci95"], "by_group": {}}
    for g in sorted({p.group for p, _ in coughs}):
        sub = [r for r in rows if r[2] == g]
        out["by_group"][g] = {"events": len(sub), **_auc_figures([r[0] for r in sub], [r[1] for r in sub])}
    return out


def run_daemon_pipeline(det, cls, stream: np.ndarray, detector_threshold: float | None = None,
                        onset: OnsetSettings | None = None, chunk: int = 1600, verifier=None
                        ) -> tuple[list[StreamEvent], float]:
    """Feed ``stream`` through the daemon's ``Pipeline`` as `edge run` does, with the loaded detector and classifier
    (``edge.inference.Model``), onset settings and verifier (``edge.verifier.Verifier``, or None); its events and the
    seconds it took."""
    from edge.onset import OnsetDetector
    from edge.pipeline import Pipeline

    pipe = Pipeline(det, cls, "stream-benchmark", detector_threshold=detector_threshold, synced=False,
                    onset=OnsetDetector(det.info.sample_rate, onset), start_utc=datetime(2026, 1, 1, tzinfo=timezone.utc),
                    verifier=verifier)
    events, t0 = [], time.perf_counter()
    for start in range(0, stream.size, chunk):
        events += pipe.feed(stream[start: start + chunk])
    events += pipe.flush()
    seconds = time.perf_counter() - t0
    info = cls.info
    return [StreamEvent(e.onset_sample, e.cough_score, e.probabilities[info.positive_label]) for e in events], seconds


def clip_level(classifier, coughs: list[D.Clip], room: list[D.Clip], s: StreamSettings, group_by: str) -> dict:
    """The classifier on every onset window of the same cough recordings, each heard in its own scene (no
    cough detector): the clip-level figure the events are compared with."""
    from .train import evaluation_windows

    info = classifier.info
    labelled = [c for c in coughs if c.label in info.labels]
    if not labelled:
        return {}
    mode = classifier.session.get_modelmeta().custom_metadata_map.get("window_pad", "context")
    maker = SceneMaker(ContextSettings(mode=mode, sample_rate=info.sample_rate), room, info.window_samples)
    ws = evaluation_windows(labelled, maker, info.labels, window=info.window_samples, pre_roll=info.pre_roll_samples,
                            seed=s.seed, split=f"{s.split}-clip", progress=False)
    scores = np.concatenate([classifier(ws.windows[i: i + 64]) for i in range(0, len(ws.windows), 64)])
    scores = scores[:, info.positive_index]
    is_pos = ws.targets == info.positive_index
    values = np.array([labelled[i].column(group_by) if group_by else "" for i in ws.clip])
    pooled = _auc_figures(list(is_pos), list(scores))
    out = {"windows": int(len(ws.windows)), "pooled": pooled["roc_auc"], "pooled_ci95": pooled["roc_auc_ci95"],
           "by_group": {}}
    for g in sorted(set(values)):
        m = values == g
        out["by_group"][g] = {"windows": int(m.sum()), **_auc_figures(list(is_pos[m]), list(scores[m]))}
    return out


@dataclass(frozen=True)
class StreamCommand:
    """`trainer stream` settings: ``--stream-*`` and the same ``--model-*`` flags as `edge run`."""

    stream: StreamSettings = field(default_factory=StreamSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    onset: OnsetSettings = field(default_factory=OnsetSettings)
    """The daemon's onset detector: the same ``--onset-*`` settings as `edge run`."""


def onset_gate(truth: list[Placed], stream: np.ndarray, sample_rate: int, onset: OnsetSettings | None,
               levels: list[float]) -> dict:
    """Share of placed coughs that the onset detector alone gives a window (a sound in the event tolerance), overall
    and per level: the most any detector behind that gate could find."""
    from edge.windows import find_sounds

    sounds = [StreamEvent(x.onset, 1.0, 0.0) for x in find_sounds(stream, sample_rate, onset)]
    m = score_stream(truth, sounds, stream.size, sample_rate, levels=levels)
    bouts = {"coughs_in_bouts": m["coughs_in_bouts"]} if "coughs_in_bouts" in m else {}
    return {"coughs": m["coughs"], "coughs_by_level": m["coughs_by_level"], **bouts,
            "sounds_per_hour": len(sounds) / (stream.size / sample_rate / 3600)}


def run_stream(s: StreamSettings, detector: Path, classifier: Path, *, audio_out: Path | None = None,
               detector_threshold: float | None = None, onset: OnsetSettings | None = None,
               verifier: str = AUTO) -> dict:
    """Build the stream, run the daemon's pipeline on it, score it: the benchmark's whole result. ``verifier`` is
    the daemon's setting (``edge.verifier.resolve``: ``auto``, a folder, or empty)."""
    from edge.inference import Model
    from edge.verifier import Verifier, resolve

    s.validate()
    det, cls = Model(detector), Model(classifier)
    chosen = resolve(verifier, det.info, scanning=(onset or OnsetSettings()).scan_ms > 0)
    log.info("%s", chosen.why)
    ver = Verifier(chosen.folder) if chosen.folder else None
    coughs, sounds = _held_out_audio(s, det.info.sample_rate, trained_on=(det.info.train_data,))
    rate = det.info.sample_rate
    stream, truth, room = build_stream(coughs, sounds, s, rate, s.group_by)
    log.info("stream: %.1f min, %d coughs and %d other sounds placed", stream.size / rate / 60,
             sum(p.kind == "cough" for p in truth), sum(p.kind == "sound" for p in truth))
    if audio_out is not None:
        write_stream(audio_out, stream, rate, truth)
    events, seconds = run_daemon_pipeline(det, cls, stream, detector_threshold, onset, verifier=ver)
    best, _ = placed_scores(det, cls, stream, truth, onset, ver)
    result = score_stream(truth, events, stream.size, rate, class_labels=cls.info.labels,
                          positive_label=cls.info.positive_label, levels=s.levels, room=room.pieces)
    result["onset_gate"] = onset_gate(truth, stream, rate, onset, s.levels)
    result["detector_clip_level"] = detector_clip_level(truth, best)
    result["classifier_clip_level"] = clip_level(cls, coughs, room.clips, s, s.group_by)
    result["real_time_factor"] = seconds / (stream.size / rate)
    own = det.info.threshold if ver is None else ver.spec.threshold
    threshold = own if detector_threshold is None else detector_threshold
    result["models"] = {"detector": {"path": str(detector), "threshold": threshold, "sha256": det.sha256},
                        "verifier": {"path": str(chosen.folder), "mix": ver.spec.mix, "tagger": ver.spec.tagger,
                                     "tagger_sha256": ver.spec.tagger_sha256} if ver else {"none": chosen.why},
                        "classifier": {"path": str(classifier), "threshold": cls.info.threshold,
                                       "sha256": cls.sha256, "positive_label": cls.info.positive_label}}
    result["settings"] = asdict(s)
    result["onset_settings"] = asdict(onset or OnsetSettings())
    return result


@dataclass
class Replay:
    """A benchmark stream and the daemon's events on it (:func:`replay_daemon`)."""

    stream: np.ndarray
    truth: list[Placed]
    room: Room
    events: list[StreamEvent]
    sample_rate: int
    verifier: str
    """Which verifier ran, and why (``edge.verifier.resolve``)."""


def replay_daemon(cmd: StreamCommand) -> Replay:
    """``cmd``'s stream and the daemon's events on it, as `trainer stream` builds and runs them (its models, its
    verifier resolved as the daemon resolves it, ``detector_threshold`` where one is given): for the bench scripts
    that look into what the benchmark counts."""
    from edge.inference import Model
    from edge.verifier import Verifier, resolve

    s = cmd.stream.validate()
    det, cls = Model(cmd.model.detector), Model(cmd.model.classifier)
    chosen = resolve(cmd.model.verifier, det.info, scanning=cmd.onset.scan_ms > 0)
    rate = det.info.sample_rate
    coughs, sounds = _held_out_audio(s, rate, trained_on=(det.info.train_data,))
    stream, truth, room = build_stream(coughs, sounds, s, rate, s.group_by)
    threshold = cmd.model.detector_threshold if cmd.model.detector_threshold >= 0 else None
    events, _ = run_daemon_pipeline(det, cls, stream, threshold, cmd.onset,
                                    verifier=Verifier(chosen.folder) if chosen.folder else None)
    return Replay(stream, truth, room, events, rate, chosen.why)


class Remembered:
    """A loaded model (or verifier) whose answer for each window is computed once: a sweep replays the same stream,
    and which windows the pipeline cuts does not depend on the threshold (which of them merge does). Everything
    else (``info``, ``spec``, ``mixed``, ...) is the wrapped object's."""

    def __init__(self, model) -> None:
        self.model = model
        self.answers: dict[bytes, np.ndarray] = {}

    def __getattr__(self, name: str):
        return getattr(self.model, name)

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        out = []
        for w in windows:
            key = hashlib.sha1(np.ascontiguousarray(w, dtype=np.float32).tobytes()).digest()
            if key not in self.answers:
                self.answers[key] = self.model(w[None])[0]
            out.append(self.answers[key])
        return np.stack(out)


def choose_detector_threshold(s: StreamSettings, detector: Path, classifier: Path,
                              onset: OnsetSettings | None = None, verifier: str = "") -> dict:
    """Sweep the cough detector's threshold on a validation stream; keep the lowest one (the most sensitive)
    whose background events per hour stay within ``s.max_false_per_hour``, and write it into the file (with a
    ``verifier`` folder, the threshold of the mixed score, into the verifier's spec, with the detector it was chosen
    with; ``auto`` or empty sweeps the detector alone). The daemon's pipeline runs once per threshold: which sounds
    merge into a cough depends on which were accepted."""
    from tqdm import tqdm

    from edge.inference import Model
    from edge.verifier import Verifier, read_spec, write_spec

    from .export import set_threshold

    s.validate()
    if s.split != "val":
        raise ValueError("--choose-detector-threshold selects on the validation split only: add --stream-split val")
    det = Model(detector)
    rate = det.info.sample_rate
    coughs, sounds = _held_out_audio(s, rate, trained_on=(det.info.train_data,))
    stream, truth, room = build_stream(coughs, sounds, s, rate, s.group_by)
    basis = room_repetition(room.pieces, stream.size, rate)
    if basis["speakers"] < FEW_ROOM_SPEAKERS:
        log.warning("the validation room holds %d speakers (%d recordings, %.1f min of distinct audio played %.1f times "
                    "over): a few speakers' habits make most of its background rate, so the threshold chosen on it is "
                    "rough (--stream-room-share puts more of them in the room)", basis["speakers"], basis["recordings"],
                    basis["distinct_minutes"], basis["times_heard"])
    det, cls, table = Remembered(det), Remembered(Model(classifier)), []
    ver = Remembered(Verifier(verifier)) if verifier not in ("", AUTO) else None
    for t in tqdm(np.round(np.arange(0.05, 1.0, 0.02), 2), desc="threshold sweep", unit="threshold"):
        events, _ = run_daemon_pipeline(det, cls, stream, float(t), onset, verifier=ver)
        m = score_stream(truth, events, stream.size, rate, levels=s.levels)
        table.append({"threshold": float(t), "sensitivity": m["coughs"]["share"],
                      "background_events_per_hour": m["background_events_per_hour"],
                      "background_wideband_per_hour": m["background_by_band"]["wideband"]["per_hour"],
                      "background_away_from_coughs_per_hour": m["background_away_from_coughs_per_hour"],
                      "events_per_detected_cough": m["events_per_detected_cough"],
                      "sounds_with_event": m["sounds"]["share"]})
    counted = "background_wideband_per_hour" if s.max_false_where == "wideband" else "background_events_per_hour"
    ok = [r for r in table if r[counted] is not None and r[counted] <= s.max_false_per_hour]
    if not ok:
        raise ValueError(f"no detector threshold keeps the validation stream within {s.max_false_per_hour} background "
                         f"events per hour ({s.max_false_where})")
    best = max(ok, key=lambda r: (r["sensitivity"], -r["threshold"]))
    if ver is None:
        before, into = det.info.threshold, detector
        set_threshold(detector, best["threshold"])
    else:
        before, into = ver.spec.threshold, verifier
        write_spec(Path(verifier), replace(read_spec(Path(verifier)), threshold=best["threshold"],
                                           tuned_for=det.info.created))
    log.info("threshold %.2f written into %s: validation sensitivity %.3f, %.1f background events/h (%.1f where the "
             "room is wideband)", best["threshold"], into, best["sensitivity"], best["background_events_per_hour"],
             best["background_wideband_per_hour"] or 0.0)
    return {"chosen": best, "previous_threshold": before, "sweep": table, "room": basis, "settings": asdict(s)}


def placed_scores(det, cls, stream: np.ndarray, truth: list[Placed], onset: OnsetSettings | None, verifier=None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The cough detector's score (with a ``verifier``, the mixed score) at every sound of the stream, through the
    daemon's pipeline with nothing merged: (the best score in each placed clip's span, in ``truth`` order, NaN where
    the onset detector found no sound; the score of each sound in no placed span)."""
    events, _ = run_daemon_pipeline(det, cls, stream, 0.0, replace(onset or OnsetSettings(), merge_gap_ms=0.0,
                                                                        supersede_ms=0.0), verifier=verifier)
    hits = match_events(truth, [e.onset for e in events], det.info.sample_rate)
    scores = np.array([e.cough_score for e in events])
    best = np.array([max((scores[i] for i in h), default=np.nan) for h in hits], dtype=float)
    placed = np.zeros(len(events), dtype=bool)
    for h in hits:
        placed[h] = True
    return best, scores[~placed]


def detector_candidates(det, cls, stream: np.ndarray, truth: list[Placed], onset: OnsetSettings | None
                        ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`placed_scores` for the placed coughs only (0 where no sound), and the background sounds' scores."""
    best, background = placed_scores(det, cls, stream, truth, onset)
    return np.nan_to_num(best[np.array([p.kind == "cough" for p in truth], dtype=bool)], nan=0.0), background


def detector_clip_level(truth: list[Placed], best: np.ndarray) -> dict:
    """Clip by clip, in the stream: ROC-AUC of the placed coughs' best cough scores (:func:`placed_scores`)
    against the placed non-cough sounds', pooled and against each class of sound on its own (pure). A clip the
    onset detector gave no window (NaN) scores 0; ``given_a_window`` leaves such clips out on both sides: the
    detector's own judgement of what the gate hands it."""
    coughs = [float(b) for p, b in zip(truth, best) if p.kind == "cough"]
    sounds = [(p.cls, float(b)) for p, b in zip(truth, best) if p.kind == "sound"]

    def against(scores: list[float], heard_only: bool = False) -> dict:
        pos = [b for b in coughs if not (heard_only and math.isnan(b))]
        neg = [b for b in scores if not (heard_only and math.isnan(b))]
        figures = _auc_figures([True] * len(pos) + [False] * len(neg), list(np.nan_to_num(pos + neg, nan=0.0)))
        return {"coughs": len(pos), "sounds": len(neg), **figures}

    classes = sorted({k for k, _ in sounds})
    return {"pooled": against([b for _, b in sounds]),
            "by_class": {c: against([b for k, b in sounds if k == c]) for c in classes},
            "given_a_window": {"pooled": against([b for _, b in sounds], True),
                               "by_class": {c: against([b for k, b in sounds if k == c], True) for c in classes}}}


def compare_detectors(s: StreamSettings, a: Path, b: Path, classifier: Path, onset: OnsetSettings | None = None,
                      bootstrap: int = 1000, views_b: int | None = None) -> dict:
    """Two cough detectors on the same stream (use ``--stream-split val`` to choose between them): ROC-AUC of
    placed coughs against background sounds and sensitivity at ``s.max_false_per_hour``, a minus b, with paired
    bootstrap intervals (:func:`trainer.metrics.paired_stream_difference`). ``views_b``: b scores each sound with
    that many views (``onset.views``) instead of a's."""
    from edge.inference import Model

    from .metrics import paired_stream_difference, sensitivity_at_false_rate

    s.validate()
    onset = onset or OnsetSettings()
    try:  # a bad count fails before any work
        onset_b = onset if views_b is None else replace(onset, views=views_b)
    except ValueError as exc:
        raise ValueError(f"--compare-views {views_b}: {exc}") from exc
    if s.repeats != 1:
        raise ValueError(f"stream.repeats = {s.repeats}: the paired bootstrap draws placed coughs as independent, so "
                         "compare detectors on a stream that places each cough once (--stream-repeats 1)")
    det_a, det_b, cls = Model(a), Model(b), Model(classifier)
    if det_a.info.sample_rate != det_b.info.sample_rate:
        raise ValueError(f"{a} and {b} hear different sample rates; compare detectors of one rate")
    rate = det_a.info.sample_rate
    coughs, sounds = _held_out_audio(s, rate, trained_on=(det_a.info.train_data, det_b.info.train_data))
    stream, truth, _ = build_stream(coughs, sounds, s, rate, s.group_by)
    hours = stream.size / rate / 3600
    found = {"a": detector_candidates(det_a, cls, stream, truth, onset),
             "b": detector_candidates(det_b, cls, stream, truth, onset_b)}
    diff = paired_stream_difference(found["a"], found["b"], hours, false_per_hour=s.max_false_per_hour, n=bootstrap,
                                    seed=s.seed)
    groups = np.array([p.group or "(none)" for p in truth if p.kind == "cough"])
    by_group = {str(g): {"coughs": int((groups == g).sum()), **{
        k: sensitivity_at_false_rate(best[groups == g], background, hours, s.max_false_per_hour)
        for k, (best, background) in found.items()}} for g in sorted(set(groups.tolist()))}
    return {"a": str(a), "b": str(b), "views": {"a": onset.views, "b": onset_b.views}, "split": s.split,
            "coughs": int(groups.size), "hours": hours,
            "difference": diff, f"sensitivity_at_{s.max_false_per_hour:g}_per_hour_by_group": by_group,
            "settings": asdict(s)}


def plot_sweep(result: dict, path: Path) -> None:
    """The detector's operating curve on the validation stream: sensitivity against background events per hour, over
    the whole stream and where the room is heard wideband."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["sweep"]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot([r["background_events_per_hour"] for r in rows], [r["sensitivity"] for r in rows], "-o", ms=2,
            label="all of the stream")
    wide = [r for r in rows if r.get("background_wideband_per_hour") is not None]
    if wide:
        ax.plot([r["background_wideband_per_hour"] for r in wide], [r["sensitivity"] for r in wide], "-o", ms=2,
                label="where the room is wideband")
        ax.legend(fontsize=7, loc="lower right")
    for r in rows:
        if abs(r["threshold"] - result["previous_threshold"]) < 0.005 or r == result["chosen"]:
            ax.annotate(f"{r['threshold']:.2f}", (r["background_events_per_hour"], r["sensitivity"]), fontsize=7)
    ax.set(xscale="symlog", xlabel="background events per hour", ylabel="cough sensitivity", ylim=(0, 1.02),
           title="Cough detector threshold sweep (validation stream)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _held_out_audio(s: StreamSettings, rate: int, trained_on: tuple[str, ...] = ()) -> tuple[list[D.Clip], list[D.Clip]]:
    """The held-out coughs (of ``s.channel``) and other sounds of ``s.split``, decoded at ``rate``, and every
    ``s.unseen`` recording; ``trained_on``: the detectors' ``train_data`` (manifest folders joined by ``+``, then
    a note in brackets), among which no ``unseen`` manifest may be."""
    trained = {name for data in trained_on for name in data.split(" (")[0].split("+")}
    for name in (Path(m).parent.name for m in s.unseen.split(",") if m):
        if name in trained:
            raise ValueError(f"stream.unseen: {name!r} is among the detector's training data "
                             f"({'; '.join(trained_on)}): its sounds are not unseen; place them as sounds of a split "
                             "instead (stream.sounds)")
    cough_labels = {x for x in s.cough_labels.split(",") if x}
    coughs = [c for c in held_out(s.coughs, s.cough_labels, s, rate)
              if s.channel == "all" or is_telephone(c) == (s.channel == "telephone")]
    if not coughs:
        raise D.ManifestError(f"no {s.channel} cough recordings in the {s.split} split")
    unseen = D.load_audio(D.load_manifests(s.unseen), rate, min_samples=rate // 4) if s.unseen else []
    for clip in unseen:
        clip.extra[UNSEEN] = True
    return coughs, held_out(s.sounds, s.sound_labels, s, rate, exclude=cough_labels) + unseen


def write_stream(path: Path, stream: np.ndarray, sample_rate: int, truth: list[Placed]) -> None:
    """The stream as FLAC and its truth as ``<path>.truth.csv`` (for `edge run --source` and the bench scripts); its
    ``bursts_s`` column: where each placed event's explosive bursts start, in seconds from its onset, space-separated."""
    import soundfile as sf

    sf.write(str(path), stream, sample_rate, subtype="PCM_16")
    with open(path.with_suffix(".truth.csv"), "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["onset_s", "duration_s", "kind", "label", "group", "level_db", "source_file",
                                           "bursts_s"])
        w.writeheader()
        for p in truth:
            w.writerow({"onset_s": p.onset / sample_rate, "duration_s": (p.end - p.onset) / sample_rate,
                        "kind": p.kind, "label": p.cls, "group": p.group, "level_db": p.level_db,
                        "source_file": Path(p.path).name,
                        "bursts_s": " ".join(f"{b / sample_rate:g}" for b in p.bursts)})


def _pct(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _per_hour(x) -> str:
    return "n/a" if x is None else f"{x:.1f}"


def _ci(interval) -> str:
    return "" if not interval else f" [{interval[0]:.2f}, {interval[1]:.2f}]"


def _rate_ci(interval) -> str:
    return "" if not interval else f" [{interval[0]:.1f}, {interval[1]:.1f}]"


def _auc_cell(figures: dict) -> str:
    return _pct(figures.get("roc_auc")) + _ci(figures.get("roc_auc_ci95"))


def markdown(result: dict) -> list[str]:
    """The benchmark as README/report lines: detection, the room's false events, the onset gate, the classifier."""
    return [*_daemon_lines(result), *_detection_lines(result), *_background_lines(result), *_gate_lines(result),
            *_clip_level_lines(result), *_classifier_lines(result),
            f"Stream: {result['duration_s'] / 60:.1f} min; pipeline real-time factor in-process "
            f"{result['real_time_factor']:.4f} (this machine, one process)."]


def _daemon_lines(result: dict) -> list[str]:
    """Which daemon the stream heard: the cough detector alone, or with a verifier, at which threshold."""
    models = result.get("models", {})
    det, ver = models.get("detector", {}), models.get("verifier")
    if not det:
        return []
    def shown(path: str) -> str:  # relative to the working folder where it lies inside it
        return str(Path(path).relative_to(Path.cwd())) if Path(path).is_relative_to(Path.cwd()) else path

    if ver and "path" in ver:
        return [f"Daemon: the cough detector `{shown(det['path'])}` with the verifier `{shown(ver['path'])}` (the probe on "
                f"`{ver['tagger']}` mixed in at {ver['mix']:g}), threshold {det['threshold']:g} on the mixed score.", ""]
    why = f" ({ver['none']})" if ver and "none" in ver else ""
    return [f"Daemon: the cough detector `{shown(det['path'])}` alone, threshold {det['threshold']:g}{why}.", ""]


def _detection_lines(result: dict) -> list[str]:
    c, lv = result["coughs"], result["coughs_by_level"]
    lines = ["| cough sensitivity | " + " | ".join(f"{k} dB" for k in lv) + " | events per detected cough "
             "| non-cough sounds with an event | background events per hour | median onset error |",
             "|---" * (len(lv) + 5) + "|",
             f"| {_pct(c['share'])} ({c['with_event']}/{c['n']}){_ci(c.get('ci95'))} | "
             + " | ".join(_pct(v["share"]) for v in lv.values())
             + f" | {_pct(result['events_per_detected_cough'])} | {_pct(result['sounds']['share'])} "
             f"({result['sounds']['with_event']}/{result['sounds']['n']}) | {result['background_events_per_hour']:.1f} "
             f"| {(result['onset_error_ms'] or {}).get('median', float('nan')):.0f} ms |", ""]
    if c.get("ci95"):
        lines += ["95% intervals (Wilson, each recording one trial; a bootstrap over recordings where they are placed "
                  "more than once) by level: " + ", ".join(
            f"{k} dB{_ci(v.get('ci95'))}" for k, v in lv.items()) + ".", ""]
    by_duration = result.get("coughs_by_duration")
    if by_duration:
        lines += ["Cough sensitivity by the length of the placed single event (seconds): " + ", ".join(
            f"{k} {_pct(v['share'])} ({v['with_event']}/{v['n']})" for k, v in by_duration.items()) + ".", ""]
    multi = result.get("coughs_with_bursts")
    if multi and multi["n"]:
        b = result["bursts_heard"]
        lines += [f"{multi['n']} of the {c['n']} placed coughs hold a further explosive burst, a cough too close "
                  f"behind for the truth's single event to part ({multi['bursts']} bursts, {multi['heard']} of them "
                  f"heard, {multi['events']} events). Counting each burst as a cough: "
                  f"{_pct(result['events_per_detected_cough_by_burst'])} events per burst heard, "
                  f"{_pct(b['share'])} of the {b['n']} bursts heard.", ""]
    bouts = result.get("coughs_in_bouts")
    if bouts:
        lines += [f"Coughs in bouts ({bouts['next']['n']} placed right after another, a "
                  f"{BOUT_PAUSE_S[0]:g}-{BOUT_PAUSE_S[1]:g} s pause between): first {_pct(bouts['first']['share'])}"
                  f"{_ci(bouts['first'].get('ci95'))}, next {_pct(bouts['next']['share'])}"
                  f"{_ci(bouts['next'].get('ci95'))}.", ""]
    if result.get("coughs_by_group"):
        lines += ["Cough sensitivity by group: " + ", ".join(
            f"{k} {_pct(v['share'])} ({v['with_event']}/{v['n']})" for k, v in result["coughs_by_group"].items()), ""]
    return lines + ["Non-cough sounds with an event, by class: " + ", ".join(
        f"{k} {_pct(v['share'])} ({v['with_event']}/{v['n']})" for k, v in result["sounds_by_class"].items()), ""]


def _background_lines(result: dict) -> list[str]:
    lines = []
    if result.get("background_next_to_coughs") is not None:
        lines += [f"Background events within {NEXT_TO_S:g} s of a placed cough (its window held the cough off its "
                  f"place): {result['background_next_to_coughs']} of {result['background_events']}; farther from every "
                  f"cough, {_per_hour(result.get('background_away_from_coughs_per_hour'))} an hour of the stream "
                  "there.", ""]
    band = result.get("background_by_band")
    if band and band["telephone"]["hours"]:
        lines += [f"Background events per hour where the room passes the telephone band ({TELEPHONE_MARGIN_S:g} s "
                  f"around each telephone "
                  f"recording, {band['telephone']['hours'] * 60:.1f} min): {band['telephone']['per_hour']:.1f}; "
                  f"elsewhere ({band['wideband']['hours'] * 60:.1f} min): {band['wideband']['per_hour']:.1f}.", ""]
    return lines + _room_lines(result.get("background_by_room"))


def _room_lines(by_room: dict | None) -> list[str]:
    if not by_room or by_room["per_hour"] is None:
        return []
    groups = sorted(by_room["groups"].items(), key=lambda kv: -(kv[1]["per_hour"] or 0))
    short = [g[:8] for g, _ in groups]  # a group's first 8 characters, or all of it where those are not its own
    each = ", ".join(f"{g[:8] if short.count(g[:8]) == 1 else g} {_per_hour(v['per_hour'])} ({v['events']} in "
                     f"{v['minutes']:.1f} min)" for g, v in groups)
    rep = by_room["repetition"]
    return [f"Background events farther than {NEXT_TO_S:g} s from every cough, by the room's speaker (group) heard "
            f"there: {each}. Over the room's {len(groups)} speakers, {_per_hour(by_room['per_hour'])} an hour"
            f"{_rate_ci(by_room['ci95'])} (bootstrap over speakers). The room plays {rep['recordings']} recordings, "
            f"{rep['distinct_minutes']:.1f} min of distinct audio, {rep['times_heard']:.1f} times over: a spot that "
            "raises an event raises one each time it recurs, so a few speakers' habits can make most of the rate.", ""]


def _gate_lines(result: dict) -> list[str]:
    gate = result.get("onset_gate")
    if not gate:
        return []
    bouts = gate.get("coughs_in_bouts")
    scanning = _scanning(result)
    return [f"The onset detector alone gives {_pct(gate['coughs']['share'])} of the coughs a window ("
            + ", ".join(f"{k} dB {_pct(v['share'])}" for k, v in gate["coughs_by_level"].items())
            + f"; {gate['sounds_per_hour']:.0f} sounds per hour)"
            + (" (scanning, the cough detector does not wait for it)" if scanning else
               ": the most the cough detector could find")
            + (f" (bouts: first {_pct(bouts['first']['share'])}, next {_pct(bouts['next']['share'])})" if bouts else "")
            + ".", ""]


def _scanning(result: dict) -> bool:
    """The daemon scanned the stream (``onset.scan_ms`` > 0) instead of scoring the onset detector's sounds."""
    return bool((result.get("onset_settings") or {}).get("scan_ms"))


def _clip_level_lines(result: dict) -> list[str]:
    clip = result.get("detector_clip_level")
    if not clip:
        return []

    def line(figures: dict) -> str:
        return (f"ROC-AUC of the {figures['pooled']['coughs']} coughs against the {figures['pooled']['sounds']} other "
                f"sounds {_auc_cell(figures['pooled'])}; against each class: " + ", ".join(
                    f"{k} {_auc_cell(v)} ({v['sounds']})" for k, v in figures["by_class"].items()))

    what, none = (("peaks of the scanned score", "the scan found no peak in it") if _scanning(result) else
                  ("sounds", "the onset detector gave it no window"))
    return [f"Clip by clip (each placed clip's best cough score over the {what} in its span, nothing merged; 0 where "
            f"{none}): {line(clip)}. Among the clips given a window: {line(clip['given_a_window'])}.", ""]


def _classifier_lines(result: dict) -> list[str]:
    ev, cl = result.get("classifier_on_events") or {}, result.get("classifier_clip_level") or {}
    if not ev:
        return []
    groups = sorted(set(ev["by_group"]) | set(cl.get("by_group", {})))
    return ["| classifier ROC-AUC | pooled | " + " | ".join(groups) + " |", "|---" * (len(groups) + 2) + "|",
            f"| on published events ({ev['events']}) | {_pct(ev['pooled'])}{_ci(ev.get('pooled_ci95'))} | "
            + " | ".join(_auc_cell(ev["by_group"].get(g, {})) for g in groups) + " |",
            f"| clip level, same recordings, every onset window ({cl.get('windows', 0)}) | "
            f"{_pct(cl.get('pooled'))}{_ci(cl.get('pooled_ci95'))} | "
            + " | ".join(_auc_cell(cl.get("by_group", {}).get(g, {})) for g in groups) + " |",
            "", "(95% bootstrap intervals in brackets.)", ""]


def write_result(folder: Path, result: dict) -> None:
    """``stream.json``, ``stream.md`` and ``stream.png`` in ``folder``; when it is a run folder, its report.md and
    MODEL_CARD.md are rewritten to lead with them."""
    from .report import CAVEAT, refresh_documents

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "stream.json").write_text(json.dumps(result, indent=2))
    (folder / "stream.md").write_text("\n".join(["# Stream benchmark", "", CAVEAT, "", *markdown(result), "",
                                                f"Command: `{result.get('command', '')}`", ""]))
    plot(result, folder / "stream.png")
    if (folder / "report.json").is_file():
        refresh_documents(folder)


def plot(result: dict, path: Path) -> None:
    """Sensitivity by level and the share of non-cough sounds that raise an event, by class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    levels = result["coughs_by_level"]
    axes[0].bar(list(levels), [v["share"] or 0 for v in levels.values()], color="tab:blue")
    axes[0].axhline(0.9, color="k", ls=":", lw=0.8)
    axes[0].set(xlabel="cough level over the room (dB, loudest 10 ms frame vs RMS)", ylabel="sensitivity",
                ylim=(0, 1.05), title=f"Coughs heard (events per detected cough "
                                      f"{result['events_per_detected_cough'] or 0:.2f})")
    classes = result["sounds_by_class"]
    axes[1].bar(list(classes), [v["share"] or 0 for v in classes.values()], color="tab:red")
    axes[1].set(ylabel="share with an event", ylim=(0, 1.05),
                title=f"Other sounds taken for coughs; {result['background_events_per_hour']:.1f} room events/h")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
