"""A second look at the daemon's candidate coughs, replayed on the benchmark's validation streams: does anything
beyond the cough detector's own score tell coughs from false alarms?

Candidates are the shipped daemon's events with the detector's threshold lowered to ``CANDIDATE_MIN`` (the energy
gate, its merge and yield rules), plus each peak of the scanned score (``edge.scan``: smoothed over 3 positions,
400 ms apart) at ``CANDIDATE_MIN`` or more with no gate candidate within 0.6 s. Each candidate is re-scored by:

- ``detector``: the detector's own score, gate candidates only (the shipped daemon at another threshold);
- ``detector, gate and scan``: the same over both kinds of candidate;
- ``context``: a logistic regression over the detector's score and what surrounds the candidate in the stream
  (:data:`FEATURES`: the scanned score before, at and after it, its loudness over the room, the room's activity around
  it), fitted on one half of the two validation streams and applied to the other (two folds split in time);
- ``tagger`` (with ``--verifier``, a verifier folder: `trainer export-verifier`, ``edge.verifier``): the detector's
  score mixed with the tagger probe's cough probability on the same window, ``(1 - mix) * score + mix * probe``,
  for each mix in :data:`MIXES` (the verifier's own mix is not used: this is where it is chosen), and joined so that
  both must agree (:data:`COMBINES`: their geometric mean, or the lower of the two);
- ``tagger's Cough score`` (with ``--tagger-cough``, e.g. ``../shared/teachers/yamnet/yamnet.onnx``): the tagger's own
  ``Cough`` class score, fitted on nothing here, mixed into the detector's score for each weight in
  :data:`TAGGER_COUGH_MIXES`, alone and beside the probe at 0.3.

For each, the threshold is the most sensitive one within ``--max-false-per-hour`` background events an hour on the
single-cough stream (swept over the candidates' own scores, so each rule gets its best case on this stream); the
stream with half the coughs in bouts is scored at it.

    python bench/second_stage.py --verifier models/cough-verifier [any --stream-* flag of `trainer stream`, e.g.
        --stream-room-share 0.9; the split is always val]

A research aid, not part of the daemon: it reads the streams the way `trainer stream --stream-split val` builds them.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from edge import config  # noqa: E402
from edge.inference import Model  # noqa: E402
from edge.onset import OnsetSettings  # noqa: E402
from edge.scan import pick_peaks  # noqa: E402
from edge.windows import cut_window  # noqa: E402
from scan_rules import scan_track, smoothed  # noqa: E402
from trainer.stream import (StreamCommand, StreamEvent, _held_out_audio, build_stream, match_events,  # noqa: E402
                            run_daemon_pipeline, score_stream)

CANDIDATE_MIN = 0.2
"""Lowest detector score of a candidate."""
APART_S = 0.6
"""A scan peak this close to a gate candidate, in seconds, is the same sound."""
FEATURES = ("score", "from the gate", "scan max -0.3..+0.6 s", "scan mean -2..-0.6 s", "scan max -2..-0.6 s",
            "scan mean +0.8..+2.2 s", "scan max +0.8..+2.2 s", "loudness over the room", "room active -2..-0.2 s",
            "room active +0.3..+1.5 s", "rise over the 0.6 s before", "share of scan over 0.5 -0.3..+0.6 s")
MIXES = (0.2, 0.3, 0.4, 0.5, 1.0)
"""Weights of the verifier's probability tried (1.0: the probe alone, on the detector's candidates)."""
TAGGER_COUGH_MIXES = (0.1, 0.2, 0.3)
"""Weights of the tagger's own Cough score tried (with ``--tagger-cough``), in place of that much of the detector's."""
COMBINES = {"geometric mean": lambda d, p: np.sqrt(d * p), "both (the lower)": np.minimum}
"""Other ways to join the detector's score and the probe's probability: each asks both to agree."""
FRAME = 160
"""Samples in a 10 ms frame at 16 kHz."""


@dataclass
class Stream:
    """One validation stream: its audio, truth, scanned raw score, frame levels and candidates."""

    audio: np.ndarray
    truth: list
    positions: np.ndarray
    raw: np.ndarray
    frame_db: np.ndarray
    onsets: np.ndarray
    scores: np.ndarray
    from_gate: np.ndarray


def candidates(gate: list[StreamEvent], positions: np.ndarray, raw: np.ndarray) -> tuple[np.ndarray, ...]:
    """Onsets, detector scores and origin (gate or scan) of the candidates, in time order."""
    s, hop = smoothed(raw, 3), int(positions[1] - positions[0])
    g = np.array([e.onset for e in gate], dtype=np.int64)
    rows = [(e.onset, e.cough_score, True) for e in gate]
    for k in pick_peaks(s, CANDIDATE_MIN, max(1, round(0.4 * 16000 / hop))):
        p = int(positions[k])
        if not g.size or np.abs(g - p).min() >= APART_S * 16000:
            rows.append((p, float(s[k]), False))
    rows.sort()
    onsets, scores, from_gate = zip(*rows)
    return np.array(onsets), np.array(scores), np.array(from_gate)


def build(cmd: StreamCommand, det: Model, cls: Model, bout_share: float) -> Stream:
    s = replace(cmd.stream, split="val", bout_share=bout_share)
    coughs, sounds = _held_out_audio(s, 16000)
    audio, truth, _ = build_stream(coughs, sounds, s, 16000, s.group_by)
    positions, raw = scan_track(det, audio, 1600, round(cmd.onset.scan_gate_ms * 16), cmd.onset.scan_min_dbfs)
    gate = run_daemon_pipeline(det, cls, audio, CANDIDATE_MIN, OnsetSettings())[0]
    frames = audio[: audio.size // FRAME * FRAME].reshape(-1, FRAME).astype(np.float64)
    frame_db = 10 * np.log10(np.mean(frames ** 2, axis=1) + 1e-12)
    return Stream(audio, truth, positions, raw, frame_db, *candidates(gate, positions, raw))


def features(st: Stream) -> np.ndarray:
    """``[candidates, len(FEATURES)]``."""
    hop = int(st.positions[1] - st.positions[0])

    def scan(k: int, a_s: float, b_s: float) -> np.ndarray:
        x = st.raw[max(0, k + round(a_s * 16000 / hop)): max(0, k + round(b_s * 16000 / hop))]
        return x if x.size else np.zeros(1)

    def level(f: int, a_s: float, b_s: float) -> np.ndarray:
        x = st.frame_db[max(0, f + round(a_s * 100)): max(0, f + round(b_s * 100))]
        return x if x.size else np.full(1, -120.0)

    rows = []
    for onset, score, gate in zip(st.onsets, st.scores, st.from_gate):
        k, f = int(onset) // hop, int(onset) // FRAME
        room, loud = np.median(level(f, -3.0, -0.5)), level(f, 0.0, 0.3).max()
        rows.append([score, float(gate), scan(k, -0.3, 0.6).max(), scan(k, -2.0, -0.6).mean(), scan(k, -2.0, -0.6).max(),
                     scan(k, 0.8, 2.2).mean(), scan(k, 0.8, 2.2).max(), loud - room,
                     np.mean(level(f, -2.0, -0.2) > room + 6), np.mean(level(f, 0.3, 1.5) > room + 6),
                     loud - level(f, -0.6, -0.05).max(), np.mean(scan(k, -0.3, 0.6) > 0.5)])
    return np.array(rows)


def labels(st: Stream) -> np.ndarray:
    """1 for the candidate nearest each placed cough's onset among those in its span; 0 for every other."""
    hits = match_events(st.truth, st.onsets.tolist(), 16000)
    y = np.zeros(st.onsets.size, dtype=int)
    for p, h in zip(st.truth, hits):
        if p.kind == "cough" and h:
            y[min(h, key=lambda i: abs(int(st.onsets[i]) - p.onset))] = 1
    return y


def scored(st: Stream, value: np.ndarray, threshold: float) -> dict:
    events = [StreamEvent(int(o), 1.0, 0.0) for o, v in zip(st.onsets, value) if v >= threshold]
    return score_stream(st.truth, events, st.audio.size, 16000)


def loud_share(m: dict, min_db: float = 15.0) -> float:
    rows = [v for k, v in m["coughs_by_level"].items() if float(k) >= min_db]
    return sum(v["with_event"] for v in rows) / sum(v["n"] for v in rows)


def best(st: Stream, value: np.ndarray, max_per_hour: float) -> tuple[float, dict] | None:
    found = None
    for thr in np.unique(np.round(value[value > 0], 3)):
        m = scored(st, value, float(thr))
        if m["background_events_per_hour"] <= max_per_hour and (found is None or m["coughs"]["share"] > found[1]["coughs"]["share"]):
            found = (float(thr), m)
    return found


def context_scores(streams: list[Stream]) -> list[np.ndarray]:
    """Each stream's candidates scored by a logistic regression fitted on the other half in time of both streams."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X = [features(st) for st in streams]
    y = [labels(st) for st in streams]
    later = [st.onsets >= st.audio.size // 2 for st in streams]
    out = [np.zeros(st.onsets.size) for st in streams]
    for fold in (False, True):
        fit = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(
            np.vstack([x[h != fold] for x, h in zip(X, later)]), np.concatenate([t[h != fold] for t, h in zip(y, later)]))
        for o, x, h in zip(out, X, later):
            o[h == fold] = fit.predict_proba(x[h == fold])[:, 1]
    return out


def verifier_scores(folder: Path, st: Stream, det: Model) -> np.ndarray:
    """The verifier's probability of a cough on each candidate's detector window."""
    from edge.verifier import Verifier

    verifier, info = Verifier(folder), det.info
    windows = np.stack([cut_window(st.audio, 0, int(o), info.window_samples, info.pre_roll_samples) for o in st.onsets])
    return verifier(windows)


def tagger_cough_scores(path: Path, st: Stream, det: Model) -> np.ndarray:
    """The tagger's own ``Cough`` class score (its highest over the tagger's positions) on each candidate's detector
    window: what the pretrained tagger says with nothing fitted on this project's data."""
    from trainer.tagger import OnnxTagger

    tagger, info = OnnxTagger(path, ("cough", "other"), "cough", "Cough", 16000, "--tagger-cough"), det.info
    windows = np.stack([cut_window(st.audio, 0, int(o), info.window_samples, info.pre_roll_samples) for o in st.onsets])
    return tagger.positive_scores(windows)


def rows(name: str, single: Stream, bouts: Stream, value: np.ndarray, value_b: np.ndarray, max_h: float) -> str:
    found = best(single, value, max_h)
    if found is None:
        return f"| {name} | {max_h:g} | none within | | | | | |"
    thr, m = found
    b = scored(bouts, value_b, thr)
    cb = b["coughs_in_bouts"]
    return (f"| {name} | {max_h:g} | {m['coughs']['share']:.3f} | {loud_share(m):.3f} | {m['events_per_detected_cough']:.3f} "
            f"| {m['background_events_per_hour']:.1f} | {m['sounds']['share']:.3f} | {b['coughs']['share']:.3f} "
            f"({cb['first']['share']:.3f} / {cb['next']['share']:.3f}) |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--detector", type=Path, default=Path("models/cough-detector/student.int8.onnx"))
    ap.add_argument("--config", default="bench/stream-negatives.toml")
    ap.add_argument("--verifier", type=Path, default=None, help="a verifier folder (trainer export-verifier)")
    ap.add_argument("--tagger-cough", type=Path, default=None,
                    help="an ONNX tagger with a class_map.csv beside it (YAMNet): its own Cough score mixed in as well")
    config.add_arguments(ap, StreamCommand, only=("stream",))
    args = ap.parse_args()
    cmd = config.build(StreamCommand, file=args.config, args=args)
    det, cls = Model(args.detector), Model(cmd.model.classifier)
    single, bouts = build(cmd, det, cls, 0.0), build(cmd, det, cls, 0.5)
    rules = {"detector (gate)": [np.where(st.from_gate, st.scores, 0.0) for st in (single, bouts)],
             "detector, gate and scan": [st.scores for st in (single, bouts)],
             "context": context_scores([single, bouts])}
    if args.verifier:
        tagger = [verifier_scores(args.verifier, st, det) for st in (single, bouts)]
        for w in MIXES:
            mixed = [(1 - w) * st.scores + w * t for st, t in zip((single, bouts), tagger)]
            rules[f"tagger {w:g} (gate)"] = [np.where(st.from_gate, m, 0.0) for st, m in zip((single, bouts), mixed)]
            rules[f"tagger {w:g}, gate and scan"] = mixed
        for name, combine in COMBINES.items():
            both = [combine(st.scores, t) for st, t in zip((single, bouts), tagger)]
            rules[f"tagger, {name} (gate)"] = [np.where(st.from_gate, m, 0.0) for st, m in zip((single, bouts), both)]
    if args.tagger_cough:
        own = [tagger_cough_scores(args.tagger_cough, st, det) for st in (single, bouts)]
        for w in TAGGER_COUGH_MIXES:
            mixed = [(1 - w) * st.scores + w * c for st, c in zip((single, bouts), own)]
            rules[f"tagger's Cough score {w:g} (gate)"] = [np.where(st.from_gate, m, 0.0) for st, m in zip((single, bouts), mixed)]
            if args.verifier:
                mixed = [(0.7 - w) * st.scores + 0.3 * t + w * c for st, t, c in zip((single, bouts), tagger, own)]
                rules[f"probe 0.3 and Cough score {w:g} (gate)"] = [np.where(st.from_gate, m, 0.0)
                                                                    for st, m in zip((single, bouts), mixed)]
    print(f"{single.onsets.size} and {bouts.onsets.size} candidates; {labels(single).sum()} and {labels(bouts).sum()} "
          "of them at a placed cough\n")
    print("| rule | background events/h at most | single coughs: sensitivity | at 15 dB or more | events per detected "
          "cough | background events/h | other sounds with an event | bouts: sensitivity (first / next) |\n"
          "|---|---|---|---|---|---|---|---|")
    for max_h in (5.0, 20.0):
        for name, (value, value_b) in rules.items():
            print(rows(name, single, bouts, value, value_b, max_h), flush=True)


if __name__ == "__main__":
    main()
