"""Synthetic non-cough sounds (noise bursts, claps, tones) for the stream benchmark and for training."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")


def test_synthetic_sounds_are_deterministic_single_events_different_per_split():
    from trainer.stream import single_event
    from trainer.synthetic import KINDS, LABEL, synthetic_clips

    a, again, other = (synthetic_clips(3, 16000, 0, split) for split in ("test", "test", "val"))
    assert len(a) == 3 * len(KINDS) and {c.extra["sound_hint"] for c in a} == set(KINDS)
    assert [c.sha256 for c in a] == [c.sha256 for c in again], "deterministic by seed and split"
    assert not {c.sha256 for c in a} & {c.sha256 for c in other}, "val and test hear different sounds"
    assert len({c.group for c in a}) == len(a) and all(c.label == LABEL for c in a)
    for clip in a:
        audio = clip.audio
        assert audio.dtype == np.float32 and np.abs(audio).max() == pytest.approx(0.5, abs=1e-6)
        assert not audio[:3200].any() and not audio[-3200:].any(), "0.2 s of silence either side"
        start, end = single_event(audio, 16000)
        loud = np.flatnonzero(np.abs(audio) > 1e-3)
        assert start <= loud[0] + 160 and end >= loud[0] + 160, "the truth's rule finds the sound"


def test_unknown_synthetic_kind_is_refused():
    from trainer.context import seeded_rng
    from trainer.synthetic import synthetic_sound

    with pytest.raises(ValueError, match="unknown synthetic sound 'siren'"):
        synthetic_sound("siren", seeded_rng(0, "x"), 16000)
