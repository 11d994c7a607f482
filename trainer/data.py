"""Manifests, decoding, deduplication, group-disjoint splits and window placement.

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

log = logging.getLogger(__name__)
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".m4a", ".opus"}
GROUP_COLUMNS = ("group", "participant")
FRAME = 160  # samples per energy frame (10 ms at 16 kHz)


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
    with csv_path.open(newline="") as fh:
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
    if positive not in labels:
        raise ManifestError(f"positive label {positive!r} is not in the manifest's labels {labels}")
    if len(labels) > 2:
        for c in clips:
            c.extra.setdefault("original_label", c.label)
            c.label = c.label if c.label == positive else f"not_{positive}"
    return tuple(sorted({c.label for c in clips}, key=lambda x: (x != positive, x)))


def decode(path: Path, sample_rate: int) -> np.ndarray:
    """Mono float32 at ``sample_rate``; librosa decodes (soundfile/audioread) and resamples (soxr)."""
    import librosa

    audio, _ = librosa.load(path, sr=sample_rate, mono=True, res_type="soxr_hq")
    return audio.astype(np.float32)


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
        if not np.isfinite(audio).all() or np.abs(audio).max() < 1e-4:
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
    """Stratified by label, and group-disjoint: a group (participant) never lands in two splits.

    Clips without a group are their own group (their content hash).
    """
    from sklearn.model_selection import StratifiedGroupKFold

    if not (0 < val < 0.5 and 0 < test < 0.5):
        raise ValueError(f"val and test fractions must be in (0, 0.5), got {val}, {test}")
    groups = np.array([c.group or c.sha256 for c in clips])
    labels = np.array([c.label for c in clips])

    def take(idx: np.ndarray, frac: float, salt: int) -> tuple[np.ndarray, np.ndarray]:
        n_splits = max(2, round(1 / frac))
        if len(set(groups[idx])) < n_splits:
            raise ManifestError(f"only {len(set(groups[idx]))} groups; cannot make a {frac:.0%} split")
        folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed + salt)
        rest, held = next(folds.split(idx, labels[idx], groups[idx]))
        return idx[rest], idx[held]

    rest, test_idx = take(np.arange(len(clips)), test, 0)
    train_idx, val_idx = take(rest, val / (1 - test), 1)
    out = {name: [clips[i] for i in sorted(idx)] for name, idx in
           (("train", train_idx), ("val", val_idx), ("test", test_idx))}
    for name, part in out.items():
        missing = set(labels) - {c.label for c in part}
        if missing:
            raise ManifestError(f"{name} split has no {sorted(missing)} clips; use more data or other fractions")
    return out


def describe(parts: dict[str, list[Clip]]) -> dict[str, dict[str, int]]:
    return {name: dict(Counter(c.label for c in part)) for name, part in parts.items()}


def frame_energy_db(audio: np.ndarray) -> np.ndarray:
    n = max(1, audio.size // FRAME)
    frames = audio[: n * FRAME].reshape(n, FRAME) if audio.size >= FRAME else audio[None, :]
    return 10 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-12)


def anchor_candidates(audio: np.ndarray, within_db: float = 12.0) -> np.ndarray:
    """Sample positions of the 10 ms frames within ``within_db`` of the clip's loudest frame."""
    energy = frame_energy_db(audio)
    return np.flatnonzero(energy >= energy.max() - within_db) * FRAME


def peak_anchor(audio: np.ndarray) -> int:
    """Where the evaluation window is placed: the onset of the loudest event.

    The first frame within 12 dB of the peak, searching back at most 200 ms, mirrors how the edge's
    onset detector anchors a window at the rise of a sound rather than at its peak.
    """
    energy = frame_energy_db(audio)
    peak = int(energy.argmax())
    start = peak
    while start > 0 and peak - start < 20 and energy[start - 1] >= energy[peak] - 12.0:
        start -= 1
    return start * FRAME


PAD_MODES = ("wrap", "zero")


def window_at(audio: np.ndarray, anchor: int, window: int, pre_roll: int, pad: str = "zero") -> np.ndarray:
    """``window`` samples starting ``pre_roll`` before ``anchor``.

    Where the window runs past the clip's edges, ``pad="zero"`` fills with digital silence and
    ``pad="wrap"`` continues the recording as a loop. Zeros tell a model how long the recording was
    (a label cue in some corpora that a microphone stream never shows); a loop does not.
    """
    if pad not in PAD_MODES:
        raise ValueError(f"pad must be one of {PAD_MODES}, got {pad!r}")
    start = anchor - pre_roll
    if pad == "wrap":
        return audio[np.arange(start, start + window) % audio.size].astype(np.float32)
    out = np.zeros(window, dtype=np.float32)
    lo, hi = max(start, 0), min(start + window, audio.size)
    if hi > lo:
        out[lo - start: hi - start] = audio[lo:hi]
    return out
