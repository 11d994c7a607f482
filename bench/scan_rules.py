"""Counting rules over the cough detector's scanned score, replayed on the benchmark's validation streams.

The daemon's scan (``--onset-scan-ms``, ``edge/scan.py``) scores the detector's window every 100 ms and counts each
peak of the smoothed score as one cough. This script scores that track once per stream (the single-cough validation
stream and the same with half the coughs in bouts), then replays several rules for turning it into events, each
scored as `trainer stream` scores the daemon's events. For each rule the threshold is the most sensitive one that
keeps the single-cough stream within ``--max-false-per-hour``; the bout stream is scored at that threshold. First
it prints the raw score's profile around single coughs and across the bouts' pairs (how position-selective the
detector is).

    python bench/scan_rules.py --detector models/cough-detector/student.int8.onnx

Rules (``kind: settings``):
- ``nms``: the daemon's rule (:func:`edge.scan.pick_peaks`) with ``smooth`` positions and ``spacing_ms``.
- ``dip``: peaks with a 200 ms spacing, merged when less than 600 ms apart unless the score between them falls
  below 0.7 times the lower one.
- ``onsets``: each run of positions at or above the threshold gives events at the onset detector's sounds from its
  first position to 0.2 s after its last, those no more than ``loud_db`` under the run's loudest sound, a sound
  joining the previous event unless 20 dB under that event's peak for 100 ms came between them or it starts 0.6 s
  or more after it (the gate's merge rules); a run with no sound gives one event at its peak.
- ``pause``: the daemon's peaks, a peak under 0.6 s after the one before joining it unless the onset detector heard a
  pause between them (100 ms 20 dB under the loudest sound starting from 0.3 s before the first to 0.1 s after the
  second: the gate's bout rule).
- ``union``: the shipped daemon's events (the gate, at ``gate_threshold``) plus every scan peak (the daemon's scan
  rule) with none of them within 0.6 s: scanning only adds what the gate did not hear.
A research aid, not part of the daemon: it reads the stream the way `trainer stream --stream-split val` builds it.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge import config  # noqa: E402
from edge.inference import Model  # noqa: E402
from edge.onset import OnsetDetector, OnsetSettings  # noqa: E402
from edge.scan import gate_open, pick_peaks  # noqa: E402
from edge.windows import cut_window  # noqa: E402
from trainer.stream import (StreamCommand, StreamEvent, _held_out_audio, build_stream,  # noqa: E402
                            run_daemon_pipeline, score_stream)

GATE_THRESHOLDS = (0.43, 0.51, 0.59, 0.67)
RULES = [("nms", {"smooth": 3, "spacing_ms": 400}), ("nms", {"smooth": 3, "spacing_ms": 300}),
         ("nms", {"smooth": 3, "spacing_ms": 200}), ("nms", {"smooth": 1, "spacing_ms": 400}),
         ("nms", {"smooth": 1, "spacing_ms": 300}), ("nms", {"smooth": 1, "spacing_ms": 200}),
         ("pause", {"smooth": 1, "spacing_ms": 200}), ("pause", {"smooth": 3, "spacing_ms": 200}), ("dip", {}),
         ("onsets", {"loud_db": 10.0}), ("onsets", {"loud_db": None}), *(("union", {"gate_threshold": g}) for g in GATE_THRESHOLDS)]


@dataclass
class Track:
    """One stream's truth, its scanned raw scores and the onset detector's view of it."""

    truth: list
    n_samples: int
    positions: np.ndarray
    raw: np.ndarray
    sounds: list
    onset: OnsetDetector
    """The onset detector that heard the whole stream, every frame's band level remembered (for pauses)."""
    gate: dict
    """The shipped daemon's event onsets (the gate) at each of ``GATE_THRESHOLDS``."""


def scan_track(det: Model, stream: np.ndarray, hop: int, gate: int, min_dbfs: float) -> tuple[np.ndarray, np.ndarray]:
    """Raw cough probabilities at every grid position, as :class:`edge.scan.CoughScanner` computes them."""
    info = det.info
    positions = np.arange(0, stream.size, hop)
    raw = np.zeros(positions.size)
    for k, p in enumerate(tqdm(positions, desc="scanning", unit="window", mininterval=5)):
        if gate_open(stream[p:p + gate], min_dbfs):
            raw[k] = det(cut_window(stream, 0, int(p), info.window_samples, info.pre_roll_samples)[None])[0, info.positive_index]
    return positions, raw


def onset_view(stream: np.ndarray, rate: int) -> tuple[list, OnsetDetector]:
    """The onset detector's sounds, and the detector itself with every frame's band level remembered."""
    od = OnsetDetector(rate, OnsetSettings())
    od.remember(stream.size)
    return od(stream), od


def smoothed(raw: np.ndarray, smooth: int) -> np.ndarray:
    return np.convolve(np.pad(raw, smooth // 2), np.ones(smooth) / smooth, mode="valid")


def paused(t: Track, start: int, end: int, below_dbfs: float) -> bool:
    """100 ms or more of frames under ``below_dbfs`` between samples ``start`` and ``end`` (the gate's pause rule)."""
    return t.onset.quiet_run(int(start), int(end), below_dbfs) >= 1600


def events_nms(t: Track, thr: float, smooth: int, spacing_ms: float) -> list[int]:
    s, hop = smoothed(t.raw, smooth), int(t.positions[1] - t.positions[0])
    return [int(t.positions[k]) for k in pick_peaks(s, thr, max(1, round(spacing_ms * 16 / hop)))]


def events_dip(t: Track, thr: float) -> list[int]:
    s, hop = smoothed(t.raw, 3), int(t.positions[1] - t.positions[0])
    out: list[int] = []
    for k in pick_peaks(s, thr, max(1, round(200 * 16 / hop))):
        if out and (k - out[-1]) * hop < 9600 and s[out[-1]:k + 1].min() >= 0.7 * min(s[out[-1]], s[k]):
            out[-1] = k if s[k] > s[out[-1]] else out[-1]
            continue
        out.append(k)
    return [int(t.positions[k]) for k in out]


def events_onsets(t: Track, thr: float, loud_db: float | None) -> list[int]:
    s, p = smoothed(t.raw, 3), t.positions
    onsets = np.array([x.onset for x in t.sounds])
    peaks = np.array([x.peak_dbfs for x in t.sounds])
    out, k, above = [], 0, s >= thr
    while k < s.size:
        if not above[k]:
            k += 1
            continue
        j = k
        while j + 1 < s.size and above[j + 1]:
            j += 1
        idx = np.flatnonzero((onsets >= p[k]) & (onsets <= p[j] + 3200))
        if loud_db is not None and idx.size:
            idx = idx[peaks[idx] >= peaks[idx].max() - loud_db]
        out += _split_at_pauses(t, idx, onsets, peaks) if idx.size else [int(p[k + int(np.argmax(s[k:j + 1]))])]
        k = j + 1
    return out


def _split_at_pauses(t: Track, idx: np.ndarray, onsets: np.ndarray, peaks: np.ndarray) -> list[int]:
    first, loudest, out = idx[0], peaks[idx[0]], [int(onsets[idx[0]])]
    for i in idx[1:]:
        if paused(t, onsets[first], onsets[i], loudest - 20) or onsets[i] - onsets[first] >= 9600:
            first, loudest = i, peaks[i]
            out.append(int(onsets[i]))
        else:
            loudest = max(loudest, peaks[i])
    return out


def events_pause(t: Track, thr: float, smooth: int, spacing_ms: float) -> list[int]:
    """The daemon's peaks, then a peak less than 0.6 s after the one kept before it joins that one unless the onset
    detector heard a pause between them: 100 ms 20 dB under the loudest sound starting from 0.3 s before the first
    to 0.1 s after the second (the gate's bout rule)."""
    onsets = np.array([x.onset for x in t.sounds])
    peaks = np.array([x.peak_dbfs for x in t.sounds])
    out: list[int] = []
    for p in events_nms(t, thr, smooth, spacing_ms):
        if out and p - out[-1] < 9600:
            near = peaks[(onsets >= out[-1] - 4800) & (onsets <= p + 1600)]
            if not near.size or not paused(t, out[-1], p, float(near.max()) - 20):
                continue
        out.append(p)
    return out


def events_union(t: Track, thr: float, gate_threshold: float) -> list[int]:
    gate = np.array(t.gate[gate_threshold], dtype=np.int64)
    added = [p for p in events_nms(t, thr, 3, 400) if not np.any(np.abs(gate - p) < 9600)]
    return sorted(gate.tolist() + added)


def events(t: Track, kind: str, thr: float, settings: dict) -> list[StreamEvent]:
    pick = {"nms": events_nms, "dip": events_dip, "onsets": events_onsets, "union": events_union,
            "pause": events_pause}[kind]
    return [StreamEvent(o, 1.0, 0.0) for o in pick(t, thr, **settings)]


def best_threshold(t: Track, kind: str, settings: dict, max_per_hour: float) -> tuple[float, dict] | None:
    best = None
    for thr in np.round(np.arange(0.3, 0.96, 0.02), 2):
        m = score_stream(t.truth, events(t, kind, thr, settings), t.n_samples, 16000)
        if m["background_events_per_hour"] <= max_per_hour and (best is None or m["coughs"]["share"] > best[1]["coughs"]["share"]):
            best = (float(thr), m)
    return best


def track(cmd: StreamCommand, det: Model, cls: Model, bout_share: float, hop: int) -> Track:
    s = replace(cmd.stream, split="val", bout_share=bout_share)
    rate = det.info.sample_rate
    coughs, sounds = _held_out_audio(s, rate)
    stream, truth, _ = build_stream(coughs, sounds, s, rate, s.group_by)
    onset = cmd.onset
    positions, raw = scan_track(det, stream, hop, round(onset.scan_gate_ms * rate / 1000), onset.scan_min_dbfs)
    found, od = onset_view(stream, rate)
    gate = {g: [e.onset for e in run_daemon_pipeline(det, cls, stream, g, OnsetSettings())[0]] for g in GATE_THRESHOLDS}
    return Track(truth, stream.size, positions, raw, found, od, gate)


OFFSETS_S = (-0.6, -0.4, -0.3, -0.2, -0.1, 0.0, 0.1, 0.2, 0.3, 0.4, 0.6)


def profile(single: Track, bouts: Track) -> str:
    """The raw score around a placed cough's onset, by offset (the mean over the single-cough stream's coughs), and
    in the bout stream the score at each pair's two onsets and halfway between them: the dip scanning needs."""
    hop = int(single.positions[1] - single.positions[0])

    def at(t: Track, sample: float) -> float:
        return float(t.raw[min(t.raw.size - 1, max(0, int(round(sample / hop))))])

    coughs = [p for p in single.truth if p.kind == "cough"]
    means = [np.mean([at(single, p.onset + d * 16000) for p in coughs]) for d in OFFSETS_S]
    pairs = [(bouts.truth[k - 1], p) for k, p in enumerate(bouts.truth) if p.follows]
    first, mid, nxt = (np.mean([at(bouts, x) for x in xs]) for xs in zip(*[
        (a.onset, (a.onset + b.onset) / 2, b.onset) for a, b in pairs]))
    gap = np.median([(b.onset - a.onset) / 16000 for a, b in pairs])
    return ("| offset from a single cough's onset (s) | " + " | ".join(f"{d:+.1f}" for d in OFFSETS_S) + " |\n|---|"
            + "---|" * len(OFFSETS_S) + "\n| mean raw score | " + " | ".join(f"{m:.2f}" for m in means) + " |\n\n"
            + f"Bouts ({len(pairs)} pairs, onsets {gap:.2f} s apart at the median): mean raw score {first:.2f} at the "
            f"first onset, {mid:.2f} halfway, {nxt:.2f} at the next.\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--detector", type=Path, required=True)
    ap.add_argument("--config", default="bench/stream-negatives.toml")
    ap.add_argument("--hop-ms", type=float, default=100.0)
    ap.add_argument("--max-false-per-hour", type=float, default=20.0)
    args = ap.parse_args()
    cmd = config.build(StreamCommand, file=args.config)
    det = Model(args.detector)
    hop = round(args.hop_ms * det.info.sample_rate / 1000)
    cls = Model(cmd.model.classifier)
    single, bouts = track(cmd, det, cls, 0.0, hop), track(cmd, det, cls, 0.5, hop)
    print(profile(single, bouts))
    print("| rule | threshold | single coughs: sensitivity | events per detected cough | background/h "
          "| bouts: sensitivity | first / next |\n|---|---|---|---|---|---|---|")
    for kind, settings in RULES:
        found = best_threshold(single, kind, settings, args.max_false_per_hour)
        if found is None:
            print(f"| {kind} {settings} | none within {args.max_false_per_hour:g}/h | | | | | |")
            continue
        thr, m = found
        b = score_stream(bouts.truth, events(bouts, kind, thr, settings), bouts.n_samples, 16000)
        cb = b["coughs_in_bouts"]
        print(f"| {kind} {settings} | {thr:.2f} | {m['coughs']['share']:.3f} | {m['events_per_detected_cough']:.3f} "
              f"| {m['background_events_per_hour']:.1f} | {b['coughs']['share']:.3f} | {cb['first']['share']:.3f} / "
              f"{cb['next']['share']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
