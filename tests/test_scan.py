"""Scanning the stream with the cough detector (``[onset] scan_ms``): peaks, windows, chunking, the pipeline."""
from __future__ import annotations

import numpy as np
import pytest

from edge.config import ConfigError, build
from edge.onset import OnsetDetector, OnsetSettings
from edge.pipeline import Pipeline
from edge.scan import CoughScanner, ScanGrid, pick_peaks
from edge.settings import EdgeSettings
from edge.windows import cut_window
from test_pure import _RecordingModel, _replay

RATE = 16000


class _LoudAtPosition(_RecordingModel):
    """A detector whose cough probability is twice the RMS of the 100 ms after its window's position: it hears a
    burst only where the window puts it at the position (as a detector trained on onset windows does)."""

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        self.windows.extend(windows)
        pre = self.info.pre_roll_samples
        score = np.clip(2 * np.sqrt(np.mean(windows[:, pre:pre + 1600] ** 2, axis=1)), 0, 1)
        return np.stack([score, 1 - score], axis=1).astype(np.float32)


def _bursts(spec: list[tuple[float, float, float]], seconds: float = 6.0, seed: int = 3) -> np.ndarray:
    """A quiet room (RMS 0.002) with noise bursts: (start in s, length in s, RMS) each."""
    rng = np.random.default_rng(seed)
    audio = (0.002 * rng.standard_normal(round(RATE * seconds))).astype(np.float32)
    for start, length, rms in spec:
        at, n = round(start * RATE), round(length * RATE)
        audio[at:at + n] += (rms * rng.standard_normal(n)).astype(np.float32)
    return audio


def _scan_pipeline(detector, classifier=None, **settings) -> Pipeline:
    onset = OnsetSettings(**{"scan_ms": 100.0, **settings})
    return Pipeline(detector, classifier or _RecordingModel("cls", RATE, 4000, [0.7, 0.3]), "dev", synced=True,
                    onset=OnsetDetector(RATE, onset))


def test_pick_peaks_keeps_one_peak_per_neighbourhood_at_or_above_the_threshold():
    track = np.array([0, 0.2, 0.6, 0.9, 0.7, 0.3, 0, 0, 0.5, 0.55, 0.55, 0, 0, 0, 0.35, 0])
    assert pick_peaks(track, 0.5, 2) == [3, 9], "the earliest of equal neighbours wins; 0.35 is under the threshold"
    assert pick_peaks(track, 0.3, 2) == [3, 9, 14]
    assert pick_peaks(track, 0.5, 6) == [3], "with a wider radius 0.55 lies within 0.9's neighbourhood"
    assert pick_peaks(np.zeros(5), 0.0, 1) == [], "a silent track has no peak even at threshold 0"
    assert pick_peaks(track, 0.5, 2, first=4, last=12) == [9]
    assert pick_peaks(np.array([0, 0.6, 0, 0.4, 0]), 0.3, 2) == [1], "a lower peak within the radius is no event"


@pytest.mark.parametrize("chunk", [160, 1600, 7000, 16000 * 6])
def test_scanner_scores_the_onset_window_of_every_grid_position_whatever_the_chunking(chunk):
    audio = _bursts([(2.0, 0.2, 0.3), (4.05, 0.2, 0.3)])
    det = _LoudAtPosition("det", RATE, 4000, [0, 0])
    grid = ScanGrid(window_samples=RATE, pre_roll_samples=4000, hop_samples=1600, smooth=3, radius=4,
                    gate_samples=4000, min_rms_dbfs=-120.0)
    scanner = CoughScanner(lambda w: det(w)[:, 0], grid, threshold=0.3)
    peaks = [p for i in range(0, audio.size, chunk) for p in scanner(audio[i:i + chunk])] + scanner.flush()
    assert scanner.scored == len(det.windows) == 60, "every position of the 6 s grid, the gate open"
    for k, window in enumerate(det.windows):
        np.testing.assert_array_equal(window, cut_window(audio, 0, k * 1600, RATE, 4000))
    assert [p.position for p in peaks] == [32000, 65600], "the grid positions nearest each burst"
    assert peaks[0].score == pytest.approx(np.mean([float(det(det.windows[k][None])[0, 0]) for k in (19, 20, 21)]))
    assert peaks[0].end - peaks[0].position in (1600, 3200), "the run at or above the threshold around the peak"


def test_scanner_runs_no_detector_on_a_silent_stream_and_finds_nothing():
    det = _LoudAtPosition("det", RATE, 4000, [0, 0])
    grid = ScanGrid(window_samples=RATE, pre_roll_samples=4000, hop_samples=1600, smooth=3, radius=4,
                    gate_samples=4000, min_rms_dbfs=-60.0)
    scanner = CoughScanner(lambda w: det(w)[:, 0], grid, threshold=0.0)
    assert scanner(np.zeros(RATE * 5, np.float32)) + scanner.flush() == []
    assert scanner.scored == 0 and det.windows == []


@pytest.mark.parametrize("chunk", [160, 1000, 16000 * 8])
def test_scanning_pipeline_hears_a_two_phase_cough_once_and_the_next_cough_apart(chunk):
    """A cough whose voiced phase follows 150 ms after its burst is one event; a cough 800 ms later is another; the
    classifier gets its window at each event's position."""
    audio = _bursts([(2.0, 0.2, 0.4), (2.35, 0.15, 0.2), (3.0, 0.2, 0.4)], seconds=8)
    det, cls = _LoudAtPosition("det", RATE, 4000, [0, 0]), _RecordingModel("cls", 48000, 4000, [0.7, 0.3])
    pipe = _scan_pipeline(det, cls, scan_min_dbfs=-120.0)
    events = _replay(pipe, audio, chunk)
    assert len(events) == 2 and pipe.counters.sounds >= 2, "the onset detector still runs (level, noise floor)"
    for event, at in zip(events, (2.0, 3.0)):
        assert event.onset_sample in (at * RATE, at * RATE + 1600) and event.onset_sample % 1600 == 0
    assert [e.label for e in events] == ["yes", "yes"] and pipe.counters.events == 2
    assert pipe.health()["scanned"] == 80 == len(det.windows)
    for event, window in zip(events, cls.windows):
        np.testing.assert_array_equal(window, cut_window(audio, 0, event.onset_sample, 48000, 4000))
    assert all(e.cough_score >= det.info.threshold for e in events)


def test_scanning_pipeline_memory_stays_bounded():
    audio = _bursts([(s, 0.2, 0.4) for s in range(1, 39)], seconds=40)
    pipe = _scan_pipeline(_LoudAtPosition("det", RATE, 4000, [0, 0]), _RecordingModel("cls", 48000, 4000, [0.7, 0.3]))
    held, events = [], []
    for i in range(0, audio.size, 1600):
        events += pipe.feed(audio[i:i + 1600])
        held.append(pipe.health()["buffered_s"])
    events += pipe.flush()
    assert len(events) == 38 and max(held) < 6


def test_scan_settings_are_checked_with_the_key_and_value(tmp_path):
    with pytest.raises(ValueError, match=r"scan_ms = 5.0 must be 0 \(off\) or in \[10, 500\] ms"):
        OnsetSettings(scan_ms=5.0)
    with pytest.raises(ValueError, match="scan_smooth = 4 must be an odd whole number"):
        OnsetSettings(scan_smooth=4)
    with pytest.raises(ValueError, match="scan_min_dbfs = 3.0 must be in"):
        OnsetSettings(scan_min_dbfs=3.0)
    config = tmp_path / "edge.toml"
    config.write_text("[onset]\nscan_spacing_ms = 0\n")
    with pytest.raises(ConfigError, match="scan_spacing_ms"):
        build(EdgeSettings, file=config)
    with pytest.raises(ValueError, match="scan_gate_ms = 900.0 reaches past the cough detector's window"):
        _scan_pipeline(_LoudAtPosition("det", RATE, 4000, [0, 0]), scan_gate_ms=900.0)
