"""`trainer mine`: the daemon's own false alarms on a stream of the training split, as recordings to train on.

The stream is the benchmark's (:mod:`trainer.stream`: coughs and other sounds placed into a room of speech and
breathing), built from the **training** split of the same manifests, so nothing in it is validation or test audio.
The daemon's pipeline runs over it with the given models, as `edge run` would. Every event that is no placed
cough's and lies farther than ``NEXT_TO_S`` from every placed cough is a false alarm: one raised by the room (a
speaker's breath, vowel or counting) or by a placed non-cough sound (speech, laughter, music...). Each becomes a
short recording, the stream around the event's onset, labelled ``--mine-label`` (not a cough), in the group of the
speaker or sound it came from, so that the stable split rule keeps it in the training split. A spot of the room
heard again (the room replays its recordings) is kept once. A pretrained tagger listens to each: one it scores as a
cough may be a cough the manifest does not name (Coswara breathing holds some) and is left out, as `trainer
distill --data-label-check` leaves such recordings out.

Append ``OUT/manifest.csv`` to `trainer distill --data`: hard-negative mining, as detectors of rare events are
commonly bootstrapped.
"""
from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from edge.onset import OnsetSettings
from edge.settings import ModelSettings

from . import data as D
from .context import RoomPiece
from .stream import NEXT_TO_S, Placed, StreamEvent, StreamSettings, match_events

log = logging.getLogger(__name__)

COLUMNS = ["path", "label", "group", "source", "sound_hint", "origin", "licence", "original_path", "second",
           "stream_onset_s", "cough_score", "tagger_score", "duration_s", "sample_rate"]
"""The columns of the manifest `trainer mine` writes."""


@dataclass(frozen=True)
class MineSettings:
    before_s: float = 0.75
    """Stream kept before each false alarm's onset, in seconds: the window's pre-roll and some lead-in."""
    after_s: float = 0.85
    """Stream kept after the onset, in seconds: the rest of the window and a little more (less than the 1 s that
    keeps every alarm clear of the placed coughs)."""
    label: str = "mined"
    """Label of the mined recordings (any label but the detector's positive one is a negative to it)."""
    same_spot_s: float = 0.2
    """Two alarms of one room recording this close, in seconds of that recording, are one spot heard twice: kept
    once."""
    tagger: str = "onnx:../shared/teachers/yamnet/yamnet.onnx"
    """``onnx:PATH`` of a pretrained audio tagger that listens to each false alarm (empty = none)."""
    tagger_classes: str = "Cough"
    """The tagger's class names that make a false alarm suspect, comma-separated."""
    max_tagger_score: float = 0.2
    """A false alarm the tagger scores this much (0-1) or more on ``tagger_classes`` may be a real cough: left out."""

    def validate(self) -> "MineSettings":
        if not (0 < self.before_s <= 2 and 0 < self.after_s < NEXT_TO_S):
            raise ValueError(f"mine.before_s = {self.before_s} must be in (0, 2] and mine.after_s = {self.after_s} "
                             f"in (0, {NEXT_TO_S}) (the alarms lie at least that far from every placed cough)")
        if not self.label or self.label != self.label.strip() or "," in self.label:
            raise ValueError(f"mine.label = {self.label!r} must be a plain label")
        if not 0 <= self.same_spot_s <= 5:
            raise ValueError(f"mine.same_spot_s = {self.same_spot_s} must be in [0, 5]")
        if not 0 < self.max_tagger_score <= 1:
            raise ValueError(f"mine.max_tagger_score = {self.max_tagger_score} must be in (0, 1]")
        return self


@dataclass(frozen=True)
class MineCommand:
    """`trainer mine` settings: the stream's (``--stream-*``; its split is always ``train``), the daemon's
    (``--model-*``, ``--onset-*``, as `edge run`) and ``--mine-*``."""

    stream: StreamSettings = field(default_factory=StreamSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    onset: OnsetSettings = field(default_factory=OnsetSettings)
    mine: MineSettings = field(default_factory=MineSettings)


@dataclass
class Alarm:
    """One false alarm of the daemon on the stream."""

    onset: int
    """Its onset, in samples of the stream."""
    cough_score: float
    origin: str
    """``room`` (the room's own audio) or ``sound`` (a placed non-cough sound)."""
    clip: D.Clip
    """The recording heard where it starts: the room's there, or the placed sound."""
    second: float
    """Where it starts, in seconds: into the room's recording; for a placed sound, after the start of the sound's
    loudest event (the benchmark's truth of it; up to ``TOLERANCE_BEFORE_S`` before it)."""


def false_alarms(truth: list[Placed], events: list[StreamEvent], pieces: list[RoomPiece], sounds: dict[str, D.Clip],
                 n_samples: int, sample_rate: int) -> list[Alarm]:
    """The events that are no placed cough's and lie farther than ``NEXT_TO_S`` from every placed cough, each with
    the recording heard where it starts: the placed sound whose span holds it (``sounds`` maps a placed sound's path
    to its recording; one not there, a synthetic sound, is skipped), else the room piece under it (pure)."""
    hits = match_events(truth, [e.onset for e in events], sample_rate)
    owner = {i: k for k, idx in enumerate(hits) for i in idx}
    reach = round(NEXT_TO_S * sample_rate)
    coughs = np.array([(max(0, p.onset - reach), p.end + reach) for p in truth if p.kind == "cough"],
                      dtype=np.int64).reshape(-1, 2)
    starts = np.array([p.start for p in pieces], dtype=np.int64)
    out = []
    for i, e in enumerate(events):
        if ((coughs[:, 0] <= e.onset) & (e.onset < coughs[:, 1])).any():
            continue
        if i in owner:
            p = truth[owner[i]]
            clip = sounds.get(p.path)
            if p.kind == "sound" and clip is not None:
                out.append(Alarm(e.onset, e.cough_score, "sound", clip, (e.onset - p.onset) / sample_rate))
            continue
        k = int(np.searchsorted(starts, e.onset, side="right")) - 1
        if k >= 0:
            piece = pieces[k]
            out.append(Alarm(e.onset, e.cough_score, "room", piece.clip,
                             (piece.offset + e.onset - piece.start) / sample_rate))
    return out


def distinct_spots(alarms: list[Alarm], same_spot_s: float) -> list[Alarm]:
    """``alarms`` less those at a spot already kept: the same recording within ``same_spot_s`` seconds of it (the
    room replays its recordings, and a spot that fires fires again each time it recurs); in stream order."""
    kept: dict[str, list[float]] = {}
    out = []
    for a in alarms:
        seen = kept.setdefault(str(a.clip.path), [])
        if any(abs(a.second - s) <= same_spot_s for s in seen):
            continue
        seen.append(a.second)
        out.append(a)
    return out


def run_mine(cmd: MineCommand, out: Path, command: str = "") -> dict:
    """Build the training split's stream, run the daemon on it, write its false alarms as recordings and a manifest."""
    import soundfile as sf

    from edge.inference import Model
    from edge.verifier import Verifier, resolve

    from .stream import _held_out_audio, build_stream, run_daemon_pipeline

    m = cmd.mine.validate()
    s = replace(cmd.stream, split="train").validate(splits=("train",))
    det, cls = Model(cmd.model.detector), Model(cmd.model.classifier)
    chosen = resolve(cmd.model.verifier, det.info, scanning=cmd.onset.scan_ms > 0)
    log.info("%s", chosen.why)
    verifier = Verifier(chosen.folder) if chosen.folder else None
    rate = det.info.sample_rate
    coughs, sounds = _held_out_audio(s, rate)
    stream, truth, room = build_stream(coughs, sounds, s, rate, s.group_by)
    log.info("training-split stream: %.1f min, %d coughs and %d other sounds placed", stream.size / rate / 60,
             sum(p.kind == "cough" for p in truth), sum(p.kind == "sound" for p in truth))
    threshold = None if cmd.model.detector_threshold == -1.0 else cmd.model.detector_threshold
    events, _ = run_daemon_pipeline(det, cls, stream, threshold, cmd.onset, verifier=verifier)
    alarms = false_alarms(truth, events, room.pieces, {str(c.path): c for c in sounds}, stream.size, rate)
    spots = distinct_spots(alarms, m.same_spot_s)
    before, after = round(m.before_s * rate), round(m.after_s * rate)
    excerpts = [stream[max(0, a.onset - before): a.onset + after] for a in spots]
    tagged = _tagger_scores(m, excerpts, rate)
    rows, suspect = _write_audio(out, spots, excerpts, tagged, m, rate, sf)
    summary = {"command": command, "stream_minutes": stream.size / rate / 60, "events": len(events),
               "false_alarms": len(alarms), "distinct_spots": len(spots), "suspect_coughs": suspect,
               "kept": len(rows), "by_origin": _count(rows, "origin"), "by_sound": _count(rows, "sound_hint"),
               "detector": {"path": str(cmd.model.detector), "sha256": det.sha256,
                            "threshold": det.info.threshold if threshold is None else threshold},
               "verifier": str(chosen.folder) if chosen.folder else "", "settings": asdict(m),
               "stream_settings": asdict(s)}
    _write_manifest(out, rows)
    (out / "mined.json").write_text(json.dumps(summary, indent=2))
    (out / "MINED.md").write_text(_markdown(summary))
    return summary


def _tagger_scores(m: MineSettings, excerpts: list[np.ndarray], rate: int) -> list[float | None]:
    """The tagger's highest score on ``m.tagger_classes`` for each excerpt (None everywhere without a tagger)."""
    if not m.tagger:
        return [None] * len(excerpts)
    from tqdm import tqdm

    from .tagger import PREFIX, OnnxTagger, is_tagger

    if not is_tagger(m.tagger):
        raise ValueError(f"mine.tagger = {m.tagger!r} must be onnx:PATH (or empty for none)")
    tagger = OnnxTagger(m.tagger[len(PREFIX):], ("cough", "other"), "cough", m.tagger_classes, rate, "mine.tagger",
                        "mine.tagger_classes")
    return [float(tagger.positive_scores(x[None])[0])
            for x in tqdm(excerpts, desc="tagger", unit="alarm")]


def _write_audio(out: Path, spots: list[Alarm], excerpts: list[np.ndarray], tagged: list[float | None],
                 m: MineSettings, rate: int, sf) -> tuple[list[dict], int]:
    """Each kept alarm's excerpt as 16-bit FLAC under ``out/audio``, and its manifest row; and how many the tagger
    left out."""
    (out / "audio").mkdir(parents=True, exist_ok=True)
    rows, suspect = [], 0
    for n, (a, x, score) in enumerate(zip(spots, excerpts, tagged)):
        if score is not None and score >= m.max_tagger_score:
            suspect += 1
            log.info("left out: the tagger scores %.2f for %s at %.2f s", score, a.clip.path.name, a.second)
            continue
        name = f"audio/{n:05d}.flac"
        sf.write(str(out / name), x, rate, subtype="PCM_16")
        hint = a.clip.extra.get("sound_hint") or a.clip.label
        rows.append({"path": name, "label": m.label, "group": a.clip.group or a.clip.sha256, "source": "mined",
                     "sound_hint": hint, "origin": a.origin, "licence": _licence(a.clip),
                     "original_path": os.path.relpath(a.clip.path), "second": f"{a.second:.3f}",
                     "stream_onset_s": f"{a.onset / rate:.3f}", "cough_score": f"{a.cough_score:.3f}",
                     "tagger_score": "" if score is None else f"{score:.3f}", "duration_s": f"{x.size / rate:.3f}",
                     "sample_rate": rate})
    return rows, suspect


def _licence(clip: D.Clip) -> str:
    """The recording's licence: its manifest's ``licence`` column, else that of the known corpus its path names."""
    from .report import KNOWN_LICENCES

    given = clip.extra.get("licence", "")
    return given or next((lic for key, lic in KNOWN_LICENCES.items() if key in str(clip.path)), "unknown")


def _write_manifest(out: Path, rows: list[dict]) -> None:
    with open(out / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def _count(rows: list[dict], column: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r[column]] = counts.get(r[column], 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _markdown(summary: dict) -> str:
    d = summary["detector"]
    return "\n".join([
        "# Mined false alarms", "",
        f"`{summary['command']}`", "",
        f"The daemon (detector `{d['path']}` at {d['threshold']:.2f}"
        + (f", verifier `{summary['verifier']}`" if summary["verifier"] else ", no verifier")
        + f") on {summary['stream_minutes']:.1f} minutes of the training split's stream raised {summary['events']} "
        f"events: {summary['false_alarms']} false alarms farther than 1 s from every placed cough, at "
        f"{summary['distinct_spots']} distinct spots. The tagger took {summary['suspect_coughs']} of those for coughs "
        f"(left out); {summary['kept']} are kept.", "",
        "By origin: " + ", ".join(f"{k} {v}" for k, v in summary["by_origin"].items()), "",
        "By sound (the recording's `sound_hint`, else its label): "
        + ", ".join(f"{k} {v}" for k, v in summary["by_sound"].items()), "",
        "Every recording is a negative from the training split, in the group of the recording it came from (a "
        "research data set for screening models, not a diagnosis); its licence is that recording's (`licence`).", ""])
