"""Manifests, decoding, deduplication and stable group-disjoint splits (windows: `trainer.context`).

A manifest is a CSV with at least ``path`` and ``label`` (paths relative to the CSV's folder), and
optionally ``participant``/``group`` and ``source``; every other column is kept in ``Clip.extra``.
A folder without ``manifest.csv`` is read as ``<folder>/<label>/<file>``.
"""
from __future__ import annotations

import csv
import hashlib
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.audio import SILENT_PEAK

log = logging.getLogger(__name__)
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".m4a", ".opus"}
GROUP_COLUMNS = ("group", "participant")


class ManifestError(ValueError):
    """The manifest cannot be used; the message names the file, row and column."""


@dataclass
class Clip:
    path: Path
    label: str
    group: str
    extra: dict = field(default_factory=dict)
    sha256: str = ""
    audio: np.ndarray | None = None

    def column(self, name: str) -> str:
        return self.label if name == "label" else (str(self.extra.get(name, "")) or "(none)")


def load_manifests(locations: str, label_map: str = "") -> list[Clip]:
    """Several comma-separated manifests concatenated, with ``from=to`` label renames applied."""
    mapping = dict(pair.split("=", 1) for pair in label_map.split(",") if pair)
    clips = [clip for loc in locations.split(",") if loc for clip in load_manifest(loc)]
    for clip in clips:
        if clip.label in mapping:
            clip.extra.setdefault("original_label", clip.label)
            clip.label = mapping[clip.label]
    return clips


def load_manifest(location: str | Path) -> list[Clip]:
    location = Path(location)
    if location.is_dir():
        csv_path = location / "manifest.csv"
        return _read_csv(csv_path) if csv_path.is_file() else _read_folder(location)
    if not location.is_file():
        raise ManifestError(f"{location}: no such manifest or folder")
    return _read_csv(location)


def _read_csv(csv_path: Path) -> list[Clip]:
    with csv_path.open(newline="", encoding="utf-8-sig") as fh:  # -sig: Excel's byte order mark
        reader = csv.DictReader(fh)
        columns = reader.fieldnames or []
        for needed in ("path", "label"):
            if needed not in columns:
                raise ManifestError(f"{csv_path}: missing column {needed!r} (columns: {columns})")
        group_col = next((c for c in GROUP_COLUMNS if c in columns), None)
        clips = []
        for line, row in enumerate(reader, start=2):
            if not row["path"] or not row["label"]:
                raise ManifestError(f"{csv_path}:{line}: empty 'path' or 'label'")
            if row["label"] != row["label"].strip():
                raise ManifestError(f"{csv_path}:{line}: label {row['label']!r} has leading or trailing spaces "
                                    "(it would become a class of its own)")
            extra = {k: v for k, v in row.items() if k not in ("path", "label")}
            group = row[group_col] if group_col and row[group_col] else ""
            clips.append(Clip(path=(csv_path.parent / row["path"]).resolve(), label=row["label"], group=group,
                              extra=extra))
    if not clips:
        raise ManifestError(f"{csv_path}: no rows")
    return clips


def _read_folder(folder: Path) -> list[Clip]:
    clips = [Clip(path=p.resolve(), label=p.parent.name, group="") for p in sorted(folder.glob("*/*"))
             if p.suffix.lower() in AUDIO_SUFFIXES]
    if not clips:
        raise ManifestError(f"{folder}: no manifest.csv and no <label>/<audio file> entries")
    return clips


def relabel(clips: list[Clip], positive: str) -> tuple[str, ...]:
    """Collapse every label other than ``positive`` into ``not_<positive>``; returns the new labels."""
    labels = sorted({c.label for c in clips})
    if len(labels) < 2:
        raise ManifestError(f"the manifest has only one label, {labels}: a classifier needs at least two")
    if positive not in labels:
        raise ManifestError(f"positive label {positive!r} is not in the manifest's labels {labels}")
    if len(labels) > 2:
        for c in clips:
            c.extra.setdefault("original_label", c.label)
            c.label = c.label if c.label == positive else f"not_{positive}"
    return tuple(sorted({c.label for c in clips}, key=lambda x: (x != positive, x)))


def decode(path: Path, sample_rate: int) -> np.ndarray:
    """Mono float32 at ``sample_rate``, by the daemon's own file reader (:func:`edge.audio.read_file`), so training
    audio is what ``edge run --source`` hears. A container libsndfile cannot open (WebM, M4A, ...) is opened by
    audioread (through librosa) and then goes through the same downmix and resampler."""
    from edge.audio import CannotOpen, read_file, to_mono_at

    try:
        return read_file(path, sample_rate)
    except CannotOpen:
        import librosa

        audio, native_rate = librosa.load(path, sr=None, mono=False)
        return to_mono_at(np.atleast_2d(audio).T, int(native_rate), sample_rate, str(path))


def load_audio(clips: list[Clip], sample_rate: int, min_samples: int, *, progress: bool = True) -> list[Clip]:
    """Hash, deduplicate and decode. Unreadable, silent or too-short files are logged by name and skipped.

    Byte-identical files are one recording: kept once when their labels agree, dropped entirely when
    they disagree (the label cannot be trusted).
    """
    from tqdm import tqdm

    by_hash: dict[str, list[Clip]] = defaultdict(list)
    for clip in clips:
        try:
            clip.sha256 = hashlib.sha256(clip.path.read_bytes()).hexdigest()
        except OSError as exc:
            log.warning("skipped %s: cannot read (%s)", clip.path, exc)
            continue
        by_hash[clip.sha256].append(clip)
    unique = []
    for group in by_hash.values():
        labels = {c.label for c in group}
        if len(labels) > 1:
            log.warning("dropped %d identical files with conflicting labels %s: %s", len(group), sorted(labels),
                        ", ".join(str(c.path) for c in group))
            continue
        if len(group) > 1:
            log.info("deduplicated %d identical files, kept %s", len(group), group[0].path)
        unique.append(group[0])
    kept = []
    for clip in tqdm(unique, desc="decoding audio", unit="file", disable=not progress):
        try:
            audio = decode(clip.path, sample_rate)
        except Exception as exc:  # noqa: BLE001 - any decoder failure: report the file and go on
            log.warning("skipped %s: cannot decode (%s: %s)", clip.path, type(exc).__name__, exc)
            continue
        if audio.size < min_samples:
            log.warning("skipped %s: %d samples, shorter than %d", clip.path, audio.size, min_samples)
            continue
        if not np.isfinite(audio).all() or np.abs(audio).max() < SILENT_PEAK:
            log.warning("skipped %s: silent or not finite", clip.path)
            continue
        clip.audio = audio
        kept.append(clip)
    if not kept:
        raise ManifestError("no usable audio: every file was unreadable, silent or too short")
    skipped = len(clips) - len(kept)
    log.info("audio: %d usable clips, %d skipped or deduplicated", len(kept), skipped)
    return kept


def split(clips: list[Clip], *, val: float, test: float, seed: int) -> dict[str, list[Clip]]:
    """Group-disjoint and stable: each group (participant; else the recording's content hash) lands in a split
    decided by a hash of the seed and the group alone.

    So a recording is in the same split in every run with the same seed and fractions, whatever else the
    run loads: the cough detector never trains on the recordings another model is tested on, and the
    stream benchmark can take held-out audio from any manifest.
    """
    if not (0 < val < 0.5 and 0 < test < 0.5):
        raise ValueError(f"val and test fractions must be in (0, 0.5), got {val}, {test}")
    out: dict[str, list[Clip]] = {"train": [], "val": [], "test": []}
    for clip in clips:
        out[split_of(clip.group or clip.sha256, val=val, test=test, seed=seed)].append(clip)
    labels = {c.label for c in clips}
    for name, part in out.items():
        missing = labels - {c.label for c in part}
        if missing:
            raise ManifestError(f"{name} split has no {sorted(missing)} clips ({len(part)} clips in it); use more "
                                "data, other fractions or another seed")
    return out


def split_of(group: str, *, val: float, test: float, seed: int) -> str:
    """``train``, ``val`` or ``test`` for a group, from a uniform hash of ``seed`` and ``group``."""
    digest = hashlib.sha256(f"{seed}:{group}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    return "test" if u < test else "val" if u < test + val else "train"


def describe(parts: dict[str, list[Clip]]) -> dict[str, dict[str, int]]:
    return {name: dict(Counter(c.label for c in part)) for name, part in parts.items()}
