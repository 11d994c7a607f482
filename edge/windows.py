"""Where a model's window sits and what it holds: the one rule the daemon and the trainer share.

A window is ``window_samples`` of the stream starting ``pre_roll_samples`` before a sound's onset, as the
onset detector (:class:`edge.onset.OnsetDetector`) reports it. :class:`edge.pipeline.Pipeline` cuts its
windows with :func:`cut_window`; the trainer finds its training and evaluation anchors with
:func:`find_sounds` (the daemon's own detector replayed over a recording) and cuts with :func:`cut_window`
too, so a model is trained and scored on exactly the samples the daemon will give it.
"""
from __future__ import annotations

import numpy as np

from .onset import OnsetDetector, OnsetSettings, Sound

REPLAY_CHUNK = 1600
"""Samples per chunk when a recording is replayed through the onset detector (decisions do not depend on it)."""


def cut_window(audio: np.ndarray, audio_start: int, onset: int, window_samples: int,
               pre_roll_samples: int) -> np.ndarray:
    """The ``window_samples`` stream samples from ``onset - pre_roll_samples`` on.

    ``audio`` holds the stream from sample ``audio_start`` on (sample positions count from the start of the
    stream). Positions the stream does not hold, before its first sample or past its end, are zero: the
    only digital silence a window ever holds is the stream's own.
    """
    start = onset - pre_roll_samples - audio_start
    out = np.zeros(window_samples, dtype=np.float32)
    lo, hi = max(start, 0), min(start + window_samples, audio.size)
    if hi > lo:
        out[lo - start: hi - start] = audio[lo:hi]
    return out


def view_offsets(views: int, step_samples: int) -> tuple[int, ...]:
    """Where a model's ``views`` windows of one sound sit, as shifts of its onset in samples: centred on it,
    ``step_samples`` apart (``views`` odd; 1 gives the onset alone)."""
    if views < 1 or views % 2 == 0:
        raise ValueError(f"views = {views} must be odd and at least 1")
    half = views // 2
    return tuple(step_samples * k for k in range(-half, half + 1))


def cut_views(audio: np.ndarray, audio_start: int, onset: int, window_samples: int, pre_roll_samples: int,
              offsets: tuple[int, ...]) -> np.ndarray:
    """``[len(offsets), window_samples]``: the window (:func:`cut_window`) at ``onset`` plus each offset."""
    return np.stack([cut_window(audio, audio_start, onset + d, window_samples, pre_roll_samples) for d in offsets])


def find_sounds(audio: np.ndarray, sample_rate: int, settings: OnsetSettings | None = None) -> list[Sound]:
    """The sounds the daemon's onset detector reports for ``audio`` heard as a stream from its first sample.

    A sound still going on at the end of ``audio`` is not reported, as in the daemon; give a recording
    some room after its last sound.
    """
    detector = OnsetDetector(sample_rate, settings)
    sounds: list[Sound] = []
    for start in range(0, audio.size, REPLAY_CHUNK):
        sounds += detector(audio[start: start + REPLAY_CHUNK])
    return sounds
