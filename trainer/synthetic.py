"""Synthetic non-cough sounds: white-noise bursts, claps (noise with a fast decay) and square-wave tones.

Sounds a home makes that an energy gate hears as sudden and broadband, like a cough's explosive phase: the
stream benchmark places them to count how many raise an event. Deterministic by seed; numpy only.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from .context import seeded_rng
from .data import Clip

KINDS = ("noise burst", "clap", "tone")
LABEL = "synthetic"
"""The label of every synthetic clip; its kind is in ``extra['sound_hint']``."""


def synthetic_sound(kind: str, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """One sound of ``kind``, peak 0.5, with 0.2 s of digital silence either side."""
    if kind == "noise burst":
        n = round(rng.uniform(0.03, 0.3) * sample_rate)
        sound = rng.standard_normal(n)
    elif kind == "clap":
        n = round(rng.uniform(0.05, 0.2) * sample_rate)
        sound = rng.standard_normal(n) * np.exp(-np.arange(n) / (rng.uniform(0.005, 0.03) * sample_rate))
    elif kind == "tone":
        n = round(rng.uniform(0.1, 0.5) * sample_rate)
        hz = rng.uniform(150, 2000)
        sound = np.sign(np.sin(2 * np.pi * hz * np.arange(n) / sample_rate))
    else:
        raise ValueError(f"unknown synthetic sound {kind!r}; one of {KINDS}")
    pad = np.zeros(round(0.2 * sample_rate))
    sound = 0.5 * sound / (np.abs(sound).max() + 1e-12)
    return np.concatenate([pad, sound, pad]).astype(np.float32)


def synthetic_clips(per_kind: int, sample_rate: int, seed: int, split: str) -> list[Clip]:
    """``per_kind`` clips of each kind, each its own group, different for each ``split`` and ``seed``."""
    clips = []
    for kind in KINDS:
        for i in range(per_kind):
            audio = synthetic_sound(kind, seeded_rng(seed, "synthetic", split, kind, str(i)), sample_rate)
            clips.append(Clip(path=Path(f"<{kind} {split} {i}>"), label=LABEL, group=f"synthetic-{split}-{kind}-{i}",
                              extra={"sound_hint": kind, "source": "synthetic"},
                              sha256=hashlib.sha256(audio.tobytes()).hexdigest(), audio=audio))
    return clips
