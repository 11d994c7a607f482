"""Audio chunks -> onsets -> windows -> cough detector -> classifier -> events. No threads, no I/O."""
from __future__ import annotations

import ctypes
import time
import uuid
from collections import deque
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone

import numpy as np

from .events import CoughEvent, ModelRef
from .inference import Model
from .onset import OnsetDetector, Sound
from .scan import CoughScanner, Peak, ScanGrid
from .verifier import Verifier, check_usable
from .windows import cut_views, cut_window, view_offsets


def clock_synced() -> bool:
    """True when the kernel says the system clock is synchronised (adjtimex state is not TIME_ERROR)."""
    try:
        buf = ctypes.create_string_buffer(512)  # struct timex, zeroed: modes = 0 (read only)
        return ctypes.CDLL(None, use_errno=True).adjtimex(buf) not in (-1, 5)
    except (OSError, AttributeError):
        return False


@dataclass(frozen=True)
class Held:
    """An accepted sound's event, kept back while a later sound may still take its place."""

    event: CoughEvent
    peak_dbfs: float
    """The sound's band peak."""
    onset: int
    """The sound's onset sample (the event is stamped at its burst, which may lie elsewhere in the window)."""


@dataclass
class Counters:
    sounds: int = 0
    """Onsets the detector found."""
    events: int = 0
    """Sounds the cough detector accepted (published)."""
    rejected: int = 0
    """Sounds the cough detector judged not to be coughs."""
    merged: int = 0
    """Sounds that followed an accepted cough without a gap (its later phases): part of its event, not new ones."""
    superseded: int = 0
    """Accepted sounds not published because a clearly better one followed within ``supersede_ms``."""
    verified: int = 0
    """Sounds the verifier's tagger heard (those whose detector score could reach the threshold with it)."""
    samples: int = 0
    """Audio samples processed."""
    busy_s: float = 0.0
    """Processing time spent, in seconds."""
    last_peak: float = 0.0
    """Largest absolute sample value of the latest chunk."""
    clipped: int = 0
    """Samples at or beyond full scale (|x| >= 0.999), since start."""
    invalid: int = 0
    """NaN or infinite samples, since start (replaced by silence before any processing)."""
    last_clipped_at: int = -1
    """Stream position (samples) of the latest clipped sample, -1 if none."""
    last_invalid_at: int = -1
    """Stream position (samples) of the latest NaN or infinite sample, -1 if none."""
    latencies_ms: list = field(default_factory=list)


class Pipeline:
    def __init__(self, detector: Model, classifier: Model, device_id: str,
                 *, onset: OnsetDetector | None = None, detector_threshold: float | None = None,
                 start_utc: datetime | None = None, synced: bool | None = None, verifier: Verifier | None = None
                 ) -> None:
        """``verifier``: a second opinion mixed into each sound's score (:mod:`edge.verifier`); the threshold is then
        the verifier's unless ``detector_threshold`` is given (without one, a verifier tuned with another cough
        detector is refused)."""
        rates = {detector.info.sample_rate, classifier.info.sample_rate}
        if len(rates) != 1:
            raise ValueError(f"the cough detector and classifier disagree on sample rate: {sorted(rates)} Hz")
        self.sample_rate = rates.pop()
        self.detector, self.classifier, self.device_id = detector, classifier, device_id
        self.onset = onset or OnsetDetector(self.sample_rate)
        if self.onset.sample_rate != self.sample_rate:
            raise ValueError(f"onset detector runs at {self.onset.sample_rate} Hz, models at {self.sample_rate} Hz")
        if verifier is not None:
            check_usable(verifier, detector.info, scanning=self.onset.s.scan_ms > 0,
                         threshold_given=detector_threshold is not None)
        self.verifier = verifier
        own = detector.info.threshold if verifier is None else verifier.spec.threshold
        self.detector_threshold = own if detector_threshold is None else detector_threshold
        self.start_utc = start_utc or datetime.now(timezone.utc)
        self.synced = clock_synced() if synced is None else synced
        self._views = view_offsets(self.onset.s.views, round(self.onset.s.view_step_ms * self.sample_rate / 1000))
        d, c = detector.info, classifier.info
        self._after = max(d.window_samples - d.pre_roll_samples + self._views[-1], c.window_samples - c.pre_roll_samples)
        self._before = max(d.pre_roll_samples - self._views[0], c.pre_roll_samples)
        self._keep = self._before + self._after + round(self.onset.s.max_duration_ms * self.sample_rate / 1000)
        self._buf = np.zeros(0, dtype=np.float32)
        self._buf_start = 0
        self._pending: list[Sound] = []
        self._merge_gap = round(self.onset.s.merge_gap_ms * self.sample_rate / 1000)
        self._merge_max = round(self.onset.s.merge_max_ms * self.sample_rate / 1000)
        self._pause_db, self._pause = self.onset.s.merge_pause_db, round(self.onset.s.merge_pause_ms * self.sample_rate / 1000)
        # (onset, end of its chain, band peak in dBFS) of the latest accepted cough
        self._cough: tuple[int, int, float] | None = None
        self._supersede = round(self.onset.s.supersede_ms * self.sample_rate / 1000)
        # accepted, not yet published (a better sound may still supersede them), each with its sound's band peak (dBFS)
        self._held: list[Held] = []
        self._burst_same = round(self.onset.s.burst_same_ms * self.sample_rate / 1000)
        # burst_rescore: a sound waits until a window cut anywhere in its own window is complete
        self._rescore_wait = d.window_samples - d.pre_roll_samples if self.onset.s.burst_rescore else 0
        self._published_bursts: deque[int] = deque(maxlen=64)  # burst starts of recently published events
        self._scanner = self._make_scanner()
        self._peaks: list[Peak] = []  # decided by the scanner, waiting for the classifier's window
        self.counters = Counters()

    def _make_scanner(self) -> CoughScanner | None:
        """The scanner when ``scan_ms`` > 0: the detector's window every ``scan_ms`` (:mod:`edge.scan`)."""
        s, info, ms = self.onset.s, self.detector.info, self.sample_rate / 1000
        if not s.scan_ms:
            return None
        gate = round(s.scan_gate_ms * ms)
        if gate > info.window_samples - info.pre_roll_samples:
            raise ValueError(f"scan_gate_ms = {s.scan_gate_ms} reaches past the cough detector's window "
                             f"({(info.window_samples - info.pre_roll_samples) / ms:g} ms after its position)")
        grid = ScanGrid(window_samples=info.window_samples, pre_roll_samples=info.pre_roll_samples,
                        hop_samples=round(s.scan_ms * ms), smooth=s.scan_smooth,
                        radius=max(1, round(s.scan_spacing_ms / s.scan_ms)), gate_samples=gate,
                        min_rms_dbfs=s.scan_min_dbfs)
        return CoughScanner(self._cough_probability, grid, self.detector_threshold)

    def _cough_probability(self, windows: np.ndarray) -> np.ndarray:
        return self.detector(windows)[:, self.detector.info.positive_index]

    def feed(self, chunk: np.ndarray) -> list[CoughEvent]:
        """Process one chunk at the models' rate; returns the events it completed, for the caller to send: those
        accepted at least ``supersede_ms`` of classified sounds ago and not superseded."""
        t0 = time.monotonic()
        chunk = self._sanitise(np.asarray(chunk, dtype=np.float32))
        c = self.counters
        c.samples += chunk.size
        self._buf = np.concatenate([self._buf, chunk])
        # the pause rule looks back from a pending sound to its cough, up to a whole chunk behind the detector
        self.onset.remember(self._keep + self._merge_max + chunk.size)
        sounds = self.onset(chunk)
        c.sounds += len(sounds)
        if self._scanner is None:
            self._pending += sounds
            self._drain(final=False)
            events = self._release(final=False, t_complete=t0)
        else:
            self._peaks += self._scanner(chunk)
            events = self._publish_peaks(final=False, t_complete=t0)
        self._trim()
        c.busy_s += time.monotonic() - t0
        return events

    def _sanitise(self, chunk: np.ndarray) -> np.ndarray:
        """NaN/inf samples become silence (counted), so that one bad sample cannot poison the onset detector's
        noise floor for good; samples at or beyond full scale are counted as clipped."""
        c = self.counters
        if not chunk.size:
            return chunk
        finite = np.isfinite(chunk)
        if not finite.all():
            bad = np.flatnonzero(~finite)
            c.invalid += int(bad.size)
            c.last_invalid_at = c.samples + int(bad[-1])
            chunk = np.where(finite, chunk, np.float32(0.0))
        magnitude = np.abs(chunk)
        clipped = np.flatnonzero(magnitude >= 0.999)
        if clipped.size:
            c.clipped += int(clipped.size)
            c.last_clipped_at = c.samples + int(clipped[-1])
        c.last_peak = float(magnitude.max())
        return chunk

    def audio_health(self, recent_s: float = 10.0) -> str:
        """``invalid`` or ``clipping`` when such samples came within the last ``recent_s`` seconds of audio, else
        ``ok``: one bad sample an hour ago says nothing about the microphone now."""
        c, horizon = self.counters, self.counters.samples - recent_s * self.sample_rate
        if c.last_invalid_at >= 0 and c.last_invalid_at >= horizon:
            return "invalid"
        if c.last_clipped_at >= 0 and c.last_clipped_at >= horizon:
            return "clipping"
        return "ok"

    def health(self) -> dict:
        """What the pipeline knows of the audio and its own work, for the stats heartbeat (its one owner)."""
        c = self.counters
        audio_s = c.samples / self.sample_rate
        lat = sorted(c.latencies_ms)
        return {
            "audio_s": round(audio_s, 1), "events": c.events, "sounds": c.sounds, "rejected": c.rejected,
            "merged": c.merged, "superseded": c.superseded, "verified": c.verified,
            "scanned": self._scanner.scored if self._scanner is not None else 0,
            "real_time_factor": round(c.busy_s / audio_s, 5) if audio_s else None,
            "clipped_samples": c.clipped, "invalid_samples": c.invalid, "audio": self.audio_health(),
            "level_dbfs": round(self.onset.level_dbfs, 1),
            "noise_floor_dbfs": round(float(self.onset.noise_floor_dbfs), 1),
            "median_latency_ms": round(lat[len(lat) // 2], 2) if lat else None,
            "buffered_s": round(self._buf.size / self.sample_rate, 2),
        }

    @property
    def last_peak(self) -> float:
        """Largest absolute sample value of the latest chunk."""
        return self.counters.last_peak

    def _trim(self) -> None:
        """Forget audio that no pending sound's window and no sound still to be reported can reach."""
        first_needed = self._buf_start + self._buf.size - self._keep
        if self._pending:
            first_needed = min(first_needed, min(s.onset for s in self._pending) - self._before)
        if self._scanner is not None:
            waiting = [p.position for p in self._peaks] + [self._scanner.undecided_from]
            first_needed = min(first_needed, min(waiting) - self._before)
        drop = first_needed - self._buf_start
        if drop > 0:
            self._buf = self._buf[drop:]
            self._buf_start += drop

    def flush(self) -> list[CoughEvent]:
        """End of stream: classify pending sounds, zero-padding windows that run past the end; publish the rest."""
        t0 = time.monotonic()
        if self._scanner is not None:
            self._peaks += self._scanner.flush()
            return self._publish_peaks(final=True, t_complete=t0)
        self._drain(final=True)
        return self._release(final=True, t_complete=t0)

    def _publish_peaks(self, final: bool, t_complete: float) -> list[CoughEvent]:
        """Classify and publish the scanner's peaks whose classifier window is complete (all when ``final``)."""
        end = self._buf_start + self._buf.size
        after = self.classifier.info.window_samples - self.classifier.info.pre_roll_samples
        ready = [p for p in self._peaks if final or p.position + after <= end]
        self._peaks = self._peaks[len(ready):]
        return self._published([self._event(p.position, p.end, p.score) for p in ready], t_complete)

    def _drain(self, final: bool) -> None:
        """Classify the pending sounds whose windows are complete (all of them when ``final``), in onset order."""
        end = self._buf_start + self._buf.size
        keep = []
        for sound in self._pending:
            if final or sound.onset + self._after + self._rescore_wait <= end:
                if not self._continues_cough(sound):
                    self._hold(self._accept(sound, self._score(sound)), sound)
            else:
                keep.append(sound)
        self._pending = keep

    def _hold(self, event: CoughEvent | None, sound: Sound) -> None:
        """Keep an accepted sound's event back; earlier ones within ``supersede_ms`` that it clearly outscores (or,
        with ``supersede_louder_db``, is that much louder than) yield."""
        if event is None:
            return
        onset, peak_dbfs = sound.onset, sound.peak_dbfs
        new = Held(event, peak_dbfs, onset)
        if self.onset.s.burst_db:  # an event for a burst already told is that cough again
            same = next((h for h in self._held if self._same_burst(event, h.event.onset_sample)), None)
            if same is not None and self._beats(event.cough_score, peak_dbfs, same):
                self._held[self._held.index(same)] = new  # the better placed of the two stands
                self.counters.superseded += 1
                return
            if same is not None or any(self._same_burst(event, b) for b in self._published_bursts):
                self.counters.merged += 1
                return
        kept = [h for h in self._held if onset - h.onset >= self._supersede
                or not self._beats(event.cough_score, peak_dbfs, h)]
        self.counters.superseded += len(self._held) - len(kept)
        self._held = kept + [new]

    def _same_burst(self, event: CoughEvent, burst_start: int) -> bool:
        """Whether ``event``'s burst starts within ``burst_same_ms`` of ``burst_start``: the same cough."""
        return abs(event.onset_sample - burst_start) < self._burst_same

    def _beats(self, cough_score: float, peak_dbfs: float, held: Held) -> bool:
        """A later accepted sound (its score and band peak) takes the place of ``held``."""
        s = self.onset.s
        louder = s.supersede_louder_db > 0 and peak_dbfs >= held.peak_dbfs + s.supersede_louder_db
        return cough_score > held.event.cough_score + s.supersede_margin or louder

    def _release(self, final: bool, t_complete: float) -> list[CoughEvent]:
        """Publish held events that no sound still to be classified can supersede. ``t_complete``: when the chunk
        that released them arrived (latency is counted from it)."""
        horizon = min([s.onset for s in self._pending] + [self.onset.unreported_from])
        settled = [final or h.onset + self._supersede <= horizon for h in self._held]
        ready = [h.event for h, done in zip(self._held, settled) if done]
        self._held = [h for h, done in zip(self._held, settled) if not done]
        self._published_bursts.extend(e.onset_sample for e in ready)
        return self._published(ready, t_complete)

    def _published(self, events: list[CoughEvent], t_complete: float) -> list[CoughEvent]:
        """``events`` stamped with their latency (from ``t_complete``, when the chunk that completed them came) and
        counted."""
        out = []
        for event in events:
            event = replace(event, latency_ms=round((time.monotonic() - t_complete) * 1000, 3))
            self.counters.events += 1
            self.counters.latencies_ms.append(event.latency_ms)
            out.append(event)
        del self.counters.latencies_ms[:-1000]
        return out

    def _continues_cough(self, sound: Sound) -> bool:
        """True when ``sound`` starts less than ``merge_gap_ms`` after the end of the latest accepted cough's chain,
        less than ``merge_max_ms`` after its onset and with no pause since (``merge_pause_db``): it is that cough's
        next phase (merged, the chain extended), unless it scores more than ``supersede_margin`` higher than the
        cough's held event, whose window then held this sound off its place: this sound's event takes that one's
        place (superseded)."""
        if self._cough is None or not self._merge_gap:
            return False
        onset, chain_end, peak = self._cough
        if sound.onset - chain_end >= self._merge_gap or sound.onset - onset >= self._merge_max:
            return False
        if self._pause_db and self.onset.quiet_run(onset, sound.onset, peak - self._pause_db) >= self._pause:
            return False  # the cough fell silent before this sound: the next cough of a bout
        held = next((h for h in self._held if h.onset == onset), None) if self._supersede else None
        if held is not None:
            score = self._score(sound)
            if score >= self.detector_threshold and self._beats(score, sound.peak_dbfs, held):
                self._held.remove(held)
                self.counters.superseded += 1
                self._hold(self._accept(sound, score), sound)
                return True
        self._cough = (onset, max(chain_end, sound.offset), peak)
        self.counters.merged += 1
        return True

    def _score(self, sound: Sound) -> float:
        """The cough detector's score of ``sound``: the mean cough probability of its views (``views`` windows
        around its onset, ``view_step_ms`` apart)."""
        info = self.detector.info
        windows = cut_views(self._buf, self._buf_start, self._scored_at(sound), info.window_samples,
                            info.pre_roll_samples, self._views)
        score = float(np.mean(self.detector(windows)[:, info.positive_index]))
        v = self.verifier
        if v is None:
            return score
        if not v.may_reach(score, self.detector_threshold):
            return v.mixed(score, 0.0)  # rejected whatever the tagger says: it need not run
        self.counters.verified += 1
        at_onset = windows[len(self._views) // 2]  # views are centred on the onset: the middle one is at it
        return v.mixed(score, float(v(at_onset[None])[0]))

    def _scored_at(self, sound: Sound) -> int:
        """Where ``sound``'s detector windows are cut: its onset, or with ``burst_rescore`` the start of a later burst
        it stands for."""
        if self._rescore_wait:
            burst = self._burst(sound)
            if burst is not None and burst[0] > sound.onset:
                return burst[0]
        return sound.onset

    def _accept(self, sound: Sound, cough_score: float) -> CoughEvent | None:
        """``sound``'s event, classified, when its cough score reaches the threshold (else counted as rejected)."""
        if cough_score < self.detector_threshold:
            self.counters.rejected += 1
            return None
        self._cough = (sound.onset, sound.offset, sound.peak_dbfs)
        return self._event(sound.onset, sound.offset, cough_score, stamp=self._burst(sound))

    def _burst(self, sound: Sound) -> tuple[int, int] | None:
        """``(start, end)`` of the burst ``sound``'s event stands for (``burst_db``): the loudest in its cough detector
        window, where that is ``burst_db`` louder than the sound's own start; None (the sound itself) otherwise or
        when ``burst_db`` is 0."""
        if not self.onset.s.burst_db:
            return None
        info = self.detector.info
        start = sound.onset - info.pre_roll_samples
        loud = self.onset.burst(start, start + info.window_samples)
        own = self.onset.burst(sound.onset, sound.onset + self._burst_same)
        if loud is None or own is None:
            return None
        if loud.peak_dbfs < own.peak_dbfs + self.onset.s.burst_db:
            return None  # the sound is as loud as anything its window heard: it stands for itself
        if self._pause_db and loud.start > own.end and \
                self.onset.quiet_run(own.end, loud.start, own.peak_dbfs - self._pause_db) >= self._pause:
            return None  # it fell silent before the louder burst: a cough, and that burst the next of its bout
        return loud.start, loud.end

    def _event(self, onset: int, offset: int, cough_score: float, stamp: tuple[int, int] | None = None) -> CoughEvent:
        """The event of a cough at stream samples [onset, offset), its window classified; stamped at ``stamp``
        (its burst's ``(start, end)``) where one is given."""
        info = self.classifier.info
        window = cut_window(self._buf, self._buf_start, onset, info.window_samples, info.pre_roll_samples)
        onset, offset = stamp or (onset, offset)
        probs = self.classifier(window[None])[0]
        if probs[info.positive_index] >= info.threshold:
            label = info.positive_label
        else:
            others = [i for i in range(len(info.labels)) if i != info.positive_index]
            label = info.labels[max(others, key=lambda i: probs[i])]
        onset_utc = self.start_utc + timedelta(seconds=onset / self.sample_rate)
        return CoughEvent(
            event_id=str(uuid.uuid4()), device_id=self.device_id,
            onset_utc=onset_utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{onset_utc.microsecond // 1000:03d}Z",
            clock_synced=self.synced, onset_sample=onset, sample_rate=self.sample_rate,
            duration_s=round((offset - onset) / self.sample_rate, 3), label=label,
            probabilities={lab: round(float(p), 6) for lab, p in zip(info.labels, probs)},
            threshold=info.threshold, cough_score=round(cough_score, 6),
            model=ModelRef(info.name, self.classifier.sha256), detector=ModelRef(self.detector.info.name,
                                                                                 self.detector.sha256),
            latency_ms=0.0)
