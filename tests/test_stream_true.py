"""One window rule for trainer and daemon, recordings heard in context, the stream benchmark's truth and metrics."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from conftest import DATA

pytest.importorskip("torch")

RATE = 16000


def _clips(folder: Path, n: int | None = None):
    from trainer.data import load_audio, load_manifest

    return load_audio(load_manifest(folder)[:n], RATE, min_samples=RATE // 10, progress=False)


class _Recorder:
    """Wraps a real edge Model and keeps every window the Pipeline hands it."""

    def __init__(self, classifier) -> None:
        self.inner, self.info, self.sha256 = classifier, classifier.info, classifier.sha256
        self.windows: list[np.ndarray] = []

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        self.windows.extend(np.array(windows))
        return self.inner(windows)


@pytest.mark.parametrize("mode", ["context", "zero", "wrap"])
def test_trainer_evaluation_windows_are_the_windows_the_pipeline_cuts(tiny_model, mode):
    """Sample for sample: the trainer's windows for a recording in its scene equal those the daemon cuts."""
    from edge.inference import Model
    from edge.onset import OnsetSettings
    from edge.pipeline import Pipeline
    from trainer.context import ContextSettings, SceneMaker, seeded_rng
    from trainer.train import evaluation_windows

    coughs, room = _clips(DATA / "covid-sample", 4), _clips(DATA / "room-sample")
    detector, classifier = _Recorder(Model(tiny_model)), _Recorder(Model(tiny_model))
    info = detector.info
    maker = SceneMaker(ContextSettings(mode=mode), room, info.window_samples)
    ws = evaluation_windows(coughs, maker, ("positive", "negative"), window=info.window_samples,
                            pre_roll=info.pre_roll_samples,
                            seed=3, split="test", progress=False)
    assert len(ws.windows) >= len(coughs) and set(ws.clip) == set(range(len(coughs)))
    for i, clip in enumerate(coughs):
        scene = maker.scene(clip, seeded_rng(3, "test", clip.sha256))
        detector.windows.clear()
        pipe = Pipeline(detector, classifier, "dev", detector_threshold=1.1, synced=True)
        for start in range(0, scene.audio.size, 1000):
            pipe.feed(scene.audio[start:start + 1000])
        pipe.flush()
        tol = round(0.3 * RATE)
        sounds = [s.onset for s in _onsets(scene.audio)]
        views = OnsetSettings().views  # the detector scores each sound's views; the middle one sits at its onset
        assert len(detector.windows) == views * len(sounds)
        middle = detector.windows[views // 2::views]
        daemon = [w for w, onset in zip(middle, sounds) if scene.start - tol <= onset < scene.end]
        trainer = ws.windows[ws.clip == i]
        assert len(daemon) == len(trainer) >= 1
        for a, b in zip(daemon, trainer):
            np.testing.assert_array_equal(a, b)


def _onsets(audio):
    from edge.windows import find_sounds

    return find_sounds(audio, RATE)


def test_cut_window_holds_zeros_only_outside_the_stream():
    from edge.windows import cut_window

    stream = np.arange(1, 11, dtype=np.float32)
    assert cut_window(stream, 0, onset=2, window_samples=8, pre_roll_samples=4).tolist() == [0, 0, 1, 2, 3, 4, 5, 6]
    # a buffer holding the stream from sample 4 on: same positions, same samples
    assert cut_window(stream[4:], 4, onset=6, window_samples=4, pre_roll_samples=1).tolist() == [6, 7, 8, 9]
    assert cut_window(stream, 0, onset=9, window_samples=4, pre_roll_samples=1).tolist() == [9, 10, 0, 0]


def test_context_scene_puts_the_recording_in_a_room_at_the_drawn_level():
    from trainer.context import ContextSettings, SceneMaker, loudest_frame_db, seeded_rng

    def rms_db(x):
        return float(10 * np.log10(np.mean(x.astype(np.float64) ** 2) + 1e-12))

    cough, room = _clips(DATA / "covid-sample", 1)[0], _clips(DATA / "room-sample")
    maker = SceneMaker(ContextSettings(level_min_db=20, level_max_db=20), room, RATE)
    scene = maker.scene(cough, seeded_rng(0, "x"))
    before = scene.audio[: scene.start]
    assert (before != 0).mean() > 0.99 and rms_db(before) > -90, "room before the recording, never digital silence"
    level = loudest_frame_db(cough.audio, RATE) - rms_db(scene.audio[: scene.start - 1600])
    assert level == pytest.approx(20.0, abs=1.5)
    again = maker.scene(cough, seeded_rng(0, "x"))
    np.testing.assert_array_equal(scene.audio, again.audio)
    anchors, _ = maker.split_anchors(scene)
    assert anchors and all(scene.start - 0.3 * RATE <= a < scene.end for a in anchors)
    with pytest.raises(ValueError, match="no background recordings"):
        SceneMaker(ContextSettings(), [], RATE).scene(cough, seeded_rng(0))


def test_split_is_stable_whatever_else_a_run_loads():
    from trainer.data import Clip, split, split_of

    def clips(n, prefix):
        return [Clip(Path(f"{prefix}{i}"), "a" if i % 2 else "b", f"{prefix}{i}", sha256=f"{i}") for i in range(n)]

    alone, mixed = clips(200, "x"), clips(200, "x") + clips(300, "y")
    a = {c.group: name for name, part in split(alone, val=0.15, test=0.15, seed=0).items() for c in part}
    b = {c.group: name for name, part in split(mixed, val=0.15, test=0.15, seed=0).items() for c in part}
    assert all(b[g] == s for g, s in a.items())
    assert split_of("x1", val=0.15, test=0.15, seed=0) == a["x1"]
    assert 15 <= sum(s == "test" for s in a.values()) <= 45


def test_a_runs_seed_leaves_its_splits_alone_and_the_split_seed_moves_them(tmp_path):
    from trainer.distill import prepare_data
    from trainer.settings import DataSettings, RunSettings, Settings

    def parts(run_seed: int, split_seed: int) -> dict:
        s = Settings(data=DataSettings(manifest=str(DATA / "covid-sample"), val_fraction=0.25, test_fraction=0.25,
                                       split_seed=split_seed, room_windows=False),
                     run=RunSettings(seed=run_seed, out=str(tmp_path))).validate()
        rd = prepare_data(s, tmp_path, progress=False, write=False)
        return {name: sorted(c.sha256 for c in part) for name, part in rd.parts.items()}

    first = parts(0, 0)
    assert parts(1, 0) == first, "another run seed: the same recordings in each split"
    assert parts(0, 1) != first, "another split seed: other splits"


def test_single_event_keeps_a_coughs_phases_together_and_stops_at_the_next_cough():
    from trainer.stream import single_event

    rng = np.random.default_rng(0)
    audio = (1e-4 * rng.standard_normal(RATE * 2)).astype(np.float32)
    burst = lambda n, a: (a * rng.standard_normal(n)).astype(np.float32)  # noqa: E731
    audio[3200:4800] += burst(1600, 0.5)      # explosive phase, 100 ms
    audio[4800:8000] += burst(3200, 0.05)     # voiced phase, 20 dB lower, 200 ms
    audio[12800:14400] += burst(1600, 0.4)    # the next cough, 300 ms later
    start, end = single_event(audio, RATE)
    assert start == 3200 and end == 8000


def test_explosive_bursts_counts_a_cough_too_close_behind_and_never_a_voiced_phase():
    from trainer.stream import explosive_bursts, single_event

    rng = np.random.default_rng(1)
    burst = lambda n, a: (a * rng.standard_normal(n)).astype(np.float32)  # noqa: E731
    audio = (1e-4 * rng.standard_normal(RATE)).astype(np.float32)
    audio[3200:4800] += burst(1600, 0.5)      # explosive phase, 100 ms
    audio[4800:8000] += burst(3200, 0.05)     # its voiced phase, 20 dB lower: one burst
    one = audio.copy()
    assert explosive_bursts(one, RATE, *single_event(one, RATE)) == (0,)
    audio[8800:10400] += burst(1600, 0.45)    # a cough 50 ms (< EVENT_GAP_S) after near silence
    start, end = single_event(audio, RATE)
    assert end >= 10400, "the single event holds both"
    assert start == 3200 and explosive_bursts(audio, RATE, start, end) == (0, 8800 - 3200)
    audio[8000:8800] += burst(800, 0.02)      # no silence between: the second is a loud voiced phase, not a cough
    assert explosive_bursts(audio, RATE, start, end) == (0,)


def test_a_double_cough_is_placed_whole_or_as_its_first_cough():
    from trainer.data import Clip
    from trainer.stream import build_stream

    rng = np.random.default_rng(2)
    audio = (1e-4 * rng.standard_normal(RATE)).astype(np.float32)
    audio[3200:4800] += (0.5 * rng.standard_normal(1600)).astype(np.float32)   # a cough
    audio[5600:7200] += (0.45 * rng.standard_normal(1600)).astype(np.float32)  # the next, 50 ms behind it
    double = Clip(Path("double.wav"), "cough", "g1", {"source": "app"}, "d", audio)
    sounds = _clips(DATA / "room-sample")
    s = _stream_settings()
    whole, truth, _ = build_stream([double], sounds, s, RATE, "source")
    cough = next(p for p in truth if p.kind == "cough")
    assert cough.bursts == (0, 5600 - 3200) and cough.end - cough.onset == 7200 - 3200
    first, truth1, _ = build_stream([double], sounds, replace(s, cut="first_cough"), RATE, "source")
    one = next(p for p in truth1 if p.kind == "cough")
    assert one.bursts == (0,) and one.end - one.onset == 5600 - 3200
    second = first[one.onset + (5600 - 3200): one.onset + (7200 - 3200)]
    room = first[one.onset - RATE // 2: one.onset - RATE // 4]
    assert np.sqrt(np.mean(second ** 2)) < 2 * np.sqrt(np.mean(room ** 2)), "the second cough is not placed"
    with pytest.raises(ValueError, match="stream.cut = 'bout' must be one of event, first_cough"):
        replace(s, cut="bout").validate()


def test_events_per_detected_cough_by_burst_counts_each_burst_heard():
    from trainer.stream import Placed, StreamEvent, score_stream

    r = RATE
    half = r // 2
    truth = [Placed("cough", "", "", "a", 20.0, 1 * r, 2 * r, bursts=(0, half)),
             Placed("cough", "", "", "b", 20.0, 5 * r, 6 * r),
             Placed("cough", "", "", "c", 20.0, 9 * r, 10 * r, bursts=(0, half)),
             Placed("cough", "", "", "d", 20.0, 13 * r, 14 * r, bursts=(0, half)),
             Placed("cough", "", "", "e", 20.0, 17 * r, 18 * r, bursts=(0, half))]
    events = [StreamEvent(1 * r, 0.9, 0.5), StreamEvent(1 * r + half, 0.9, 0.5),       # a: both bursts
              StreamEvent(5 * r, 0.9, 0.5), StreamEvent(5 * r + r // 3, 0.9, 0.5),     # b: split in two
              StreamEvent(9 * r, 0.9, 0.5),                                            # c: one of its two
              StreamEvent(13 * r, 0.9, 0.5), StreamEvent(13 * r + r // 10, 0.9, 0.5)]  # d: its first, twice
    m = score_stream(truth, events, 3600 * r, r)
    assert m["events_per_detected_cough"] == 7 / 4
    assert m["events_per_detected_cough_by_burst"] == 7 / 5, "a: two coughs heard; b, d: one cough twice; c: one"
    assert m["bursts_heard"] == {"n": 9, "with_event": 5, "share": 5 / 9}
    assert m["coughs_with_bursts"] == {"n": 4, "bursts": 8, "heard": 4, "events": 5}
    by_duration = {k: (v["n"], v["with_event"]) for k, v in m["coughs_by_duration"].items()}
    assert by_duration == {"0-0.1": (0, 0), "0.1-0.25": (0, 0), "0.25-0.5": (0, 0), "0.5-inf": (5, 4)}
    short = [Placed("cough", "", "", "f", 20.0, 1 * r, 1 * r + r // 20),
             Placed("cough", "", "", "g", 20.0, 5 * r, 5 * r + r // 5)]
    by_duration = score_stream(short, [StreamEvent(5 * r, 0.9, 0.5)], 3600 * r, r)["coughs_by_duration"]
    assert (by_duration["0-0.1"]["with_event"], by_duration["0.1-0.25"]["with_event"]) == (0, 1)


def _stream_settings(**kw):
    from trainer.stream import StreamSettings

    return replace(StreamSettings(coughs="x", sounds="y", levels_db="20,30", gap_min_s=1.0, gap_max_s=2.0), **kw)


def test_stream_builder_places_sounds_at_known_times_and_levels_deterministically():
    from trainer.context import loudest_frame_db
    from trainer.stream import build_stream

    coughs, sounds = _clips(DATA / "covid-sample", 6), _clips(DATA / "room-sample")
    s = _stream_settings()
    stream, truth, room = build_stream(coughs, sounds, s, RATE, "source")
    again, truth2, _ = build_stream(coughs, sounds, s, RATE, "source")
    np.testing.assert_array_equal(stream, again)
    assert truth == truth2
    assert sum(p.kind == "cough" for p in truth) == 6 and any(p.kind == "sound" for p in truth)
    assert not {str(c.path) for c in room.clips} & {p.path for p in truth}, "the room never holds a placed recording"
    for p in truth:
        assert p.level_db in (20.0, 30.0) and p.end > p.onset
        measured = loudest_frame_db(stream[p.onset: p.end], RATE) - s.room_dbfs
        assert measured == pytest.approx(p.level_db, abs=1.0 if p.level_db == 30 else 2.0)
    onsets = [p.onset for p in truth]
    assert onsets == sorted(onsets) and min(np.diff(onsets)) >= RATE


def test_repeated_coughs_are_heard_at_every_level_and_their_interval_counts_recordings():
    from trainer.stream import build_stream, score_stream

    coughs, sounds = _clips(DATA / "covid-sample", 4), _clips(DATA / "room-sample")
    once = [p for p in build_stream(coughs, sounds, _stream_settings(), RATE, "source")[1] if p.kind == "cough"]
    s = _stream_settings(levels_db="10,20,30", repeats=3)
    stream, truth, _ = build_stream(coughs, sounds, s, RATE, "source")
    placed = [p for p in truth if p.kind == "cough"]
    assert len(placed) == 3 * len(once) == 12
    for path in {p.path for p in placed}:
        assert sorted(p.level_db for p in placed if p.path == path) == [10.0, 20.0, 30.0]
    assert len([p for p in truth if p.kind == "sound"]) == len(
        [p for p in build_stream(coughs, sounds, _stream_settings(), RATE, "source")[1] if p.kind == "sound"])
    # every placement of two recordings heard, none of the other two: 6 of 12, but only 4 recordings decide
    heard = {placed[0].path, next(p.path for p in placed if p.path != placed[0].path)}
    from trainer.stream import StreamEvent
    events = [StreamEvent(p.onset, 0.9, 0.5) for p in placed if p.path in heard]
    m = score_stream(truth, events, stream.size, RATE, levels=s.levels)
    assert m["coughs"]["share"] == 0.5 and all(v["n"] == 4 for v in m["coughs_by_level"].values())
    lo, hi = m["coughs"]["ci95"]
    assert lo == 0.0 and hi == 1.0, "4 recordings, all or nothing each: the interval is as wide as 4 trials make it"
    with pytest.raises(ValueError, match="stream.repeats = 0 must be in 1..100"):
        _stream_settings(repeats=0).validate()
    with pytest.raises(ValueError, match="stream.max_false_where = 'telephone' must be one of all, wideband"):
        _stream_settings(max_false_where="telephone").validate()
    with pytest.raises(ValueError, match="stream.channel = 'radio' must be one of all, wideband, telephone"):
        _stream_settings(channel="radio").validate()


def test_bouts_place_the_next_cough_a_pause_after_the_first_and_are_scored_apart():
    from trainer.stream import BOUT_PAUSE_S, StreamEvent, build_stream, score_stream

    coughs, sounds = _clips(DATA / "covid-sample", 8), _clips(DATA / "room-sample")
    s = _stream_settings(bout_share=0.5)
    stream, truth, _ = build_stream(coughs, sounds, s, RATE, "source")
    assert truth == build_stream(coughs, sounds, s, RATE, "source")[1], "deterministic by seed"
    nxt = [k for k, p in enumerate(truth) if p.follows]
    assert nxt and sum(p.kind == "cough" for p in truth) == 8
    for k in nxt:
        lead, follow = truth[k - 1], truth[k]
        assert lead.kind == follow.kind == "cough" and not lead.follows and lead.level_db == follow.level_db
        assert BOUT_PAUSE_S[0] * RATE <= follow.onset - lead.end <= BOUT_PAUSE_S[1] * RATE
    # one event at each cough's onset: every cough heard once, the spans overlap but no event counts twice
    m = score_stream(truth, [StreamEvent(p.onset, 0.9, 0.5) for p in truth if p.kind == "cough"], stream.size, RATE)
    assert m["coughs"]["share"] == 1.0 and m["events_per_detected_cough"] == 1.0 and m["background_events"] == 0
    assert m["coughs_in_bouts"]["first"]["share"] == m["coughs_in_bouts"]["next"]["share"] == 1.0
    # the bout heard as one event, at its first cough: the next cough is missed, not double counted
    firsts = [StreamEvent(p.onset, 0.9, 0.5) for k, p in enumerate(truth) if p.kind == "cough" and not p.follows]
    m = score_stream(truth, firsts, stream.size, RATE)
    assert m["coughs_in_bouts"]["next"]["share"] == 0.0 and m["coughs_in_bouts"]["first"]["share"] == 1.0
    assert "coughs_in_bouts" not in score_stream(truth[:nxt[0]], [], stream.size, RATE)
    with pytest.raises(ValueError, match="stream.bout_share = 0.8 must be in \\[0, 0.5\\]"):
        _stream_settings(bout_share=0.8).validate()


def test_stream_room_keeps_to_its_labels_and_sounds_are_named_by_their_class_column():
    from trainer.stream import build_stream

    coughs, sounds = _clips(DATA / "covid-sample", 2), _clips(DATA / "room-sample")
    for clip in sounds:
        clip.extra["sound_hint"] = "hum" if clip.label == "vowel" else ""
    s = _stream_settings(room_labels="breathing", sound_class_by="sound_hint", room_share=0.9)
    _, truth, room = build_stream(coughs, sounds, s, RATE, "source")
    assert room.clips and {c.label for c in room.clips} == {"breathing"}
    assert {p.clip.label for p in room.pieces} == {"breathing"}
    placed = {p.cls for p in truth if p.kind == "sound"}
    assert "vowel" not in placed and placed <= {"hum", "counting", "breathing"}, "an empty class column falls back"
    assert "hum" in placed and "counting" in placed


def test_unseen_sounds_are_all_placed_whichever_split_and_never_the_room(tmp_path):
    import shutil

    from trainer.data import split_of
    from trainer.stream import UNSEEN, build_stream

    coughs, sounds = _clips(DATA / "covid-sample", 2), _clips(DATA / "room-sample")
    unseen = _clips(shutil.copytree(DATA / "room-sample", tmp_path / "unseen"))
    for clip in unseen:
        clip.extra[UNSEEN] = True
        clip.group = f"unseen-{clip.path.name}"
    assert {split_of(c.group, val=0.15, test=0.15, seed=0) for c in unseen} != {"test"}, "the fixture spans splits"
    s = _stream_settings(room_share=0.9)
    _, truth, room = build_stream(coughs, sounds + unseen, s, RATE, "source")
    assert not any(c.extra.get(UNSEEN) for c in room.clips), "an unseen recording is never the room"
    placed = [p.path for p in truth if p.kind == "sound"]
    assert all(placed.count(str(c.path)) == 1 for c in unseen)
    _, twice, room2 = build_stream(coughs, sounds + unseen, replace(s, unseen_repeats=2), RATE, "source")
    for clip in unseen:  # at each of the two levels once
        assert sorted(p.level_db for p in twice if p.path == str(clip.path)) == [20.0, 30.0]
    others = [p.path for p in truth if p.kind == "sound" and p.path not in {str(c.path) for c in unseen}]
    assert sorted(others) == sorted(p.path for p in twice if p.kind == "sound" and p.path in others), "placed once"
    assert room2.clips == room.clips
    with pytest.raises(ValueError, match=r"stream.unseen_repeats = 0 must be in 1..100"):
        replace(s, unseen_repeats=0).validate()


def test_unseen_sounds_must_not_be_the_detectors_training_data_nor_mined():
    from trainer.stream import _held_out_audio

    s = _stream_settings(unseen="build/vocal/manifest.csv,build/negatives-200/manifest.csv")
    with pytest.raises(ValueError, match=r"stream.unseen: 'negatives-200' is among the detector's training data "
                                         r"\(coswara\+negatives-200 \(9 train clips\)\)"):
        _held_out_audio(s, RATE, trained_on=("coswara+negatives-200 (9 train clips)",))
    with pytest.raises(ValueError, match="stream.unseen must be empty on a training-split stream"):
        replace(s, split="train").validate(splits=("train",))


def test_sound_cut_whole_places_the_whole_recording_and_cough_events_stay_cut():
    from trainer.stream import build_stream, single_event

    coughs, sounds = _clips(DATA / "covid-sample", 2), _clips(DATA / "room-sample")
    s = _stream_settings(room_share=0.5)
    _, by_event, _ = build_stream(coughs, sounds, s, RATE, "source")
    _, whole, _ = build_stream(coughs, sounds, replace(s, sound_cut="whole"), RATE, "source")
    size = {str(c.path): c.audio.size for c in sounds}
    event = {str(c.path): single_event(c.audio, RATE) for c in sounds}
    for a, b in zip(by_event, whole):
        assert (a.kind, a.path) == (b.kind, b.path)
        if a.kind == "sound":
            assert b.end - b.onset == size[b.path]
            assert a.end - a.onset == event[a.path][1] - event[a.path][0]
        else:
            assert a.end - a.onset == b.end - b.onset
    assert any(b.end - b.onset > a.end - a.onset for a, b in zip(by_event, whole) if a.kind == "sound")
    with pytest.raises(ValueError, match="stream.sound_cut = 'first_cough' must be one of event, whole"):
        replace(s, sound_cut="first_cough").validate()


def test_stream_metrics_on_hand_made_events():
    from trainer.stream import Placed, StreamEvent, score_stream

    r = RATE
    truth = [Placed("cough", "positive", "phone", "a", 10.0, 1 * r, 2 * r),
             Placed("cough", "negative", "phone", "b", 20.0, 5 * r, 6 * r),
             Placed("cough", "positive", "app", "c", 20.0, 9 * r, 10 * r),
             Placed("sound", "laughter", "", "d", 20.0, 13 * r, 14 * r),
             Placed("sound", "speech", "", "e", 20.0, 17 * r, 18 * r)]
    events = [StreamEvent(1 * r - r // 10, 0.9, 0.8),       # cough a, 0.1 s early: counts
              StreamEvent(5 * r + r // 5, 0.9, 0.3),         # cough b ...
              StreamEvent(5 * r + r // 2, 0.9, 0.4),         # ... split into two events
              StreamEvent(13 * r, 0.9, 0.5),                 # on the laughter
              StreamEvent(21 * r, 0.9, 0.5)]                 # on the room
    m = score_stream(truth, events, 3600 * r, r, class_labels=("positive", "negative"), positive_label="positive",
                     levels=[10.0, 20.0])
    ci = m["coughs"].pop("ci95")
    assert m["coughs"] == {"n": 3, "with_event": 2, "share": 2 / 3}
    assert ci[0] < 2 / 3 < ci[1] and ci == pytest.approx([0.2077, 0.9385], abs=1e-3), "Wilson interval of 2 of 3"
    assert m["coughs_by_level"]["10"]["share"] == 1.0 and m["coughs_by_level"]["20"]["share"] == 0.5
    assert m["events_per_detected_cough"] == 1.5
    assert m["sounds_by_class"]["laughter"]["share"] == 1.0 and m["sounds_by_class"]["speech"]["share"] == 0.0
    assert m["background_events"] == 1 and m["background_events_per_hour"] == 1.0
    assert m["background_next_to_coughs"] == 0
    assert {g: {k: v for k, v in x.items() if k != "ci95"} for g, x in m["coughs_by_group"].items()} == \
        {"app": {"n": 1, "with_event": 0, "share": 0.0}, "phone": {"n": 2, "with_event": 2, "share": 1.0}}
    assert m["onset_error_ms"]["median"] == pytest.approx((100 + 200) / 2)
    ev = m["classifier_on_events"]
    assert ev["events"] == 3 and ev["pooled"] == 1.0  # positive a (0.8) above both events of negative b
    assert ev["by_group"]["phone"]["roc_auc"] == 1.0 and ev["by_group"]["app"]["roc_auc"] is None
    assert ev["by_group"]["app"]["roc_auc_ci95"] is None and ev["pooled_ci95"][1] == 1.0


def test_detector_clip_level_ranks_coughs_against_each_class_of_sound():
    from trainer.stream import Placed, detector_clip_level

    r = RATE
    kinds = [("cough", "positive"), ("cough", "negative"), ("cough", "positive"), ("sound", "laughter"),
             ("sound", "speech"), ("sound", "speech")]
    truth = [Placed(kind, cls, "", str(i), 20.0, 2 * i * r, (2 * i + 1) * r) for i, (kind, cls) in enumerate(kinds)]
    best = np.array([0.9, 0.6, np.nan, 0.7, 0.2, np.nan])  # NaN: the onset detector gave the clip no window
    clip = detector_clip_level(truth, best)
    pooled = clip["pooled"]
    assert (pooled["coughs"], pooled["sounds"]) == (3, 3)
    # every clip, no window scoring 0: of the 9 cough-sound pairs 0.6 < 0.7 and the unheard cough below 0.7 and
    # 0.2 are wrong, and the unheard cough against the unheard speech clip is a tie (half)
    assert pooled["roc_auc"] == pytest.approx(5.5 / 9)
    assert clip["by_class"]["laughter"]["roc_auc"] == pytest.approx(1 / 3)
    heard = clip["given_a_window"]
    assert (heard["pooled"]["coughs"], heard["pooled"]["sounds"]) == (2, 2)
    assert heard["pooled"]["roc_auc"] == pytest.approx(3 / 4)
    assert heard["by_class"]["speech"]["roc_auc"] == 1.0 and heard["by_class"]["speech"]["sounds"] == 1
    lo, hi = heard["pooled"]["roc_auc_ci95"]
    assert lo <= 3 / 4 <= hi


def test_background_events_are_split_by_whether_the_room_passed_the_telephone_band():
    from trainer.stream import Placed, StreamEvent, score_stream

    r = RATE
    truth = [Placed("cough", "positive", "call", "a", 20.0, 10 * r, 11 * r, telephone=True),
             Placed("cough", "positive", "app", "b", 20.0, 30 * r, 31 * r)]
    events = [StreamEvent(11 * r + r // 2, 0.9, 0.5),   # 0.5 s after the telephone cough: telephone band
              StreamEvent(29 * r, 0.9, 0.5),            # 1 s before the wideband cough: wideband room
              StreamEvent(50 * r, 0.9, 0.5)]
    m = score_stream(truth, events, 3600 * r, r)
    assert m["background_next_to_coughs"] == 2, "0.5 s after one cough and 1 s before the other"
    near_s = 2 * (1 + 1 + 1)  # each cough's 1 s span widened by 1 s on both sides
    assert m["background_away_from_coughs_per_hour"] == pytest.approx(1 / ((3600 - near_s) / 3600))
    band = m["background_by_band"]
    assert band["telephone"]["events"] == 1 and band["telephone"]["hours"] == pytest.approx(3 / 3600)
    assert band["wideband"]["events"] == 2 and band["wideband"]["per_hour"] == pytest.approx(2 / (1 - 3 / 3600))
    bout = [Placed("cough", "positive", "call", "a", 20.0, 10 * r, 11 * r, telephone=True),
            Placed("cough", "positive", "call", "b", 20.0, 11 * r + r // 2, 12 * r, telephone=True, follows=True)]
    m = score_stream(bout, [StreamEvent(50 * r, 0.9, 0.5)], 3600 * r, r)
    assert m["background_away_from_coughs_per_hour"] == pytest.approx(1 / ((3600 - 4) / 3600)), \
        "a bout's widened spans overlap: 9-13 s is 4 s, not 3 + 2.5"
    assert m["background_by_band"]["telephone"]["hours"] == pytest.approx(4 / 3600)


def test_background_events_far_from_coughs_are_told_by_the_room_speaker_heard_there():
    from trainer.context import RoomPiece
    from trainer.data import Clip
    from trainer.stream import Placed, StreamEvent, markdown, score_stream

    r = RATE
    speaker = {g: Clip(Path(f"{g}.flac"), "breathing", g, audio=np.broadcast_to(np.float32(0), (n * 60 * r,)))
               for g, n in (("loud", 10), ("calm", 50), ("klettres-data/fr", 1), ("klettres-data/de", 1))}
    # the room: loud 0-600 s, calm 600-3000 s, loud again 3000-3600 s (each piece owns the room to the next start)
    room = [RoomPiece(speaker["loud"], 0, 0, 600 * r), RoomPiece(speaker["calm"], 5, 600 * r - 320, 2400 * r),
            RoomPiece(speaker["loud"], 0, 3000 * r - 320, 600 * r)]
    truth = [Placed("cough", "positive", "app", "a", 20.0, 100 * r, 101 * r)]
    events = [StreamEvent(101 * r + r // 2, 0.9, 0.5),          # next to the cough: not counted for the room
              StreamEvent(200 * r, 0.9, 0.5), StreamEvent(300 * r, 0.9, 0.5), StreamEvent(3100 * r, 0.9, 0.5),
              StreamEvent(1000 * r, 0.9, 0.5)]
    m = score_stream(truth, events, 3600 * r, r, room=room)
    by = m["background_by_room"]
    loud_s = 600 - 320 / r - 3 + 600 + 320 / r  # the cough's span widened by 1 s is in the loud speaker's room
    assert by["groups"]["loud"]["events"] == 3 and by["groups"]["calm"]["events"] == 1
    assert by["groups"]["loud"]["minutes"] == pytest.approx(loud_s / 60)
    assert by["groups"]["calm"]["per_hour"] == pytest.approx(1 / (2400 / 3600))
    assert by["per_hour"] == pytest.approx(m["background_away_from_coughs_per_hour"]), "the same rate, told apart"
    lo, hi = by["ci95"]
    assert lo == pytest.approx(1.5) and hi == pytest.approx(3 / (loud_s / 3600)), \
        "two speakers: a resample of calm alone or loud alone bounds the rate"
    text = "\n".join(markdown({**m, "real_time_factor": 0.01}))
    assert "by the room's speaker (group) heard there: loud 9.0 (3 in 19.9 min), calm 1.5 (1 in 40.0 min)" in text
    assert "Over the room's 2 speakers, 4.0 an hour [1.5, 9.0] (bootstrap over speakers)" in text
    clash = [RoomPiece(speaker["klettres-data/fr"], 0, 0, 60 * r), RoomPiece(speaker["klettres-data/de"], 0, 60 * r - 320,
                                                                              60 * r)]
    clashing = "\n".join(markdown({**score_stream([], [StreamEvent(30 * r, 0.9, 0.5)], 120 * r, r, room=clash),
                                    "real_time_factor": 0.01}))
    assert "klettres-data/fr 60.0 (1 in 1.0 min), klettres-data/de 0.0" in clashing, "groups alike in 8 characters in full"
    assert by["repetition"] == {"speakers": 2, "recordings": 2, "distinct_minutes": 60.0, "times_heard": 1.0}
    assert "The room plays 2 recordings, 60.0 min of distinct audio, 1.0 times over" in text
    twice = [RoomPiece(speaker["loud"], 0, 0, 600 * r), RoomPiece(speaker["loud"], 0, 600 * r - 320, 600 * r)]
    assert score_stream(truth, events, 1200 * r, r, room=twice)["background_by_room"]["repetition"] == \
        {"speakers": 1, "recordings": 1, "distinct_minutes": 10.0, "times_heard": 2.0}, "one recording played twice"


def test_room_pieces_tile_the_room_and_laying_them_is_drawing_them():
    from trainer.context import make_room, room_pieces

    room = _clips(DATA / "room-sample")
    n = 40 * RATE
    drawn = make_room(room, n, np.random.default_rng(3), RATE)
    rng = np.random.default_rng(3)
    pieces = room_pieces(room, n, rng, RATE)
    np.testing.assert_array_equal(make_room(room, n, rng, RATE, pieces=pieces), drawn)
    assert pieces[0].start == 0 and pieces[-1].start + pieces[-1].length >= n
    fade = round(0.02 * RATE)
    for a, b in zip(pieces, pieces[1:]):
        assert b.start == a.start + a.length - fade, "each piece cross-fades into the next"
    assert all(p.offset + p.length <= p.clip.audio.size for p in pieces)


def test_a_non_16k_setting_reaches_the_front_end_and_the_exported_metadata(tmp_path):
    from edge.inference import Model
    from trainer.export import contract_metadata, export_onnx
    from trainer.models import build_cnn_student, build_teacher
    from trainer.settings import DataSettings, Settings, StudentSettings

    with pytest.raises(ValueError, match=r"student.f_max_hz = 8000.0 must be in \[1000, 4000\] Hz"):
        Settings(data=DataSettings(manifest="x", sample_rate=8000)).validate()
    s = Settings(data=DataSettings(manifest="x", sample_rate=8000), student=StudentSettings(f_max_hz=4000)).validate()
    student = build_cnn_student(("a", "b"), "a", window_samples=8000, pre_roll_samples=2000, widths=(4, 4),
                                f_max_hz=s.student.f_max_hz, sample_rate=s.data.sample_rate).eval()
    assert student.spec.sample_rate == 8000 and student.frontend.cfg.sample_rate == 8000
    path = tmp_path / "m8k.onnx"
    export_onnx(student, path, contract_metadata(student.spec, threshold=0.5, train_data="-", teacher="-", metrics={}),
                name="m8k")
    info = Model(path).info
    assert (info.sample_rate, info.window_samples, info.pre_roll_samples) == (8000, 8000, 2000)
    with pytest.raises(ValueError, match="must be in \\[8000, 48000\\] Hz"):
        Settings(data=DataSettings(manifest="x", sample_rate=4000)).validate()
    from transformers import Wav2Vec2Config, Wav2Vec2ForSequenceClassification

    cfg = Wav2Vec2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                         conv_dim=(8, 8), conv_stride=(5, 4), conv_kernel=(10, 4), num_conv_pos_embeddings=8,
                         num_conv_pos_embedding_groups=2)
    Wav2Vec2ForSequenceClassification(cfg).save_pretrained(tmp_path / "w2v")
    with pytest.raises(ValueError, match="pretrained on 16000 Hz audio but data.sample_rate is 8000 Hz"):
        build_teacher(str(tmp_path / "w2v"), ("a", "b"), "a", window_samples=8000, pre_roll_samples=2000,
                      sample_rate=8000)


def test_room_onsets_become_windows_of_the_rooms_label_only_when_asked():
    from trainer.context import ContextSettings, SceneMaker
    from trainer.train import evaluation_windows, training_windows

    coughs, room = _clips(DATA / "covid-sample", 3), _clips(DATA / "room-sample")
    for c in coughs:
        c.label = "cough"
    maker = SceneMaker(ContextSettings(level_min_db=10, level_max_db=10), room, RATE)
    kw = dict(window=RATE, pre_roll=RATE // 4, seed=0)
    plain = evaluation_windows(coughs, maker, ("cough", "not_cough"), split="val", progress=False, **kw)
    with_room = evaluation_windows(coughs, maker, ("cough", "not_cough"), split="val", room_label="not_cough",
                                   progress=False, **kw)
    assert set(plain.targets) == {0}
    extra = len(with_room.windows) - len(plain.windows)
    assert extra > 0 and (with_room.targets == 1).sum() == extra, "the room's own onsets, labelled as the room"
    train = training_windows(coughs, maker, ("cough", "not_cough"), per_clip=2, room_label="not_cough",
                             progress=False, **kw)
    assert (train.targets == 0).sum() <= 6 and 1 <= (train.targets == 1).sum() <= 6


def _cough_scenes(level_db: float):
    """Three sample coughs (labelled cough), the sample room, and a scene maker at ``level_db`` over the room."""
    from trainer.context import ContextSettings, SceneMaker

    coughs, room = _clips(DATA / "covid-sample", 3), _clips(DATA / "room-sample")
    for c in coughs:
        c.label = "cough"
    return coughs, room, SceneMaker(ContextSettings(level_min_db=level_db, level_max_db=level_db), room, RATE)


def test_near_windows_hold_the_recording_off_its_place_and_are_labelled_as_the_room():
    from edge.windows import cut_window
    from trainer.context import ONSET_TOLERANCE_S, seeded_rng
    from trainer.train import training_windows

    coughs, room, maker = _cough_scenes(10)
    window, pre_roll = RATE, RATE // 4
    scene = maker.scene(coughs[0], seeded_rng(0, "t"))
    _, room_onsets = maker.split_anchors(scene)
    anchors = maker.near_anchors(scene, room_onsets, 50, window, pre_roll, seeded_rng(1, "t"))
    assert len(anchors) == 50
    for a in anchors:
        before = scene.start - (window - pre_roll) < a < scene.start - ONSET_TOLERANCE_S * RATE
        after = scene.end <= a < scene.end + pre_roll
        assert before or after, "an anchor whose window holds part of the recording, not at its start"
        cut = cut_window(scene.audio, 0, a, window, pre_roll)
        lo, hi = max(a - pre_roll, scene.start), min(a - pre_roll + window, scene.end)
        assert hi > lo and np.array_equal(cut[lo - (a - pre_roll): hi - (a - pre_roll)], scene.audio[lo:hi])
    kw = dict(window=window, pre_roll=pre_roll, seed=0, per_clip=2, room_label="not_cough", progress=False)
    without = training_windows(coughs, maker, ("cough", "not_cough"), **kw)
    near = training_windows(coughs, maker, ("cough", "not_cough"), near=2, **kw)
    assert (near.targets == 0).sum() == (without.targets == 0).sum()
    assert (near.targets == 1).sum() == (without.targets == 1).sum() + 2 * (without.targets == 0).sum(), "two per scene with a cough window"
    for c in room:
        c.label = "not_cough"
    negatives = training_windows(room[:2], maker, ("cough", "not_cough"), near=2, **kw)
    assert len(negatives.windows) == len(training_windows(room[:2], maker, ("cough", "not_cough"), **kw).windows), \
        "recordings of the room's label get no near windows"


def test_shifted_windows_hold_the_onset_off_its_place_clear_of_every_onset_and_are_labelled_as_the_room():
    from trainer.context import SHIFT_AFTER_S, seeded_rng
    from trainer.train import training_windows

    coughs, _, maker = _cough_scenes(25)
    window, pre_roll = RATE, RATE // 4
    own, _ = maker.split_anchors(maker.scene(coughs[1], seeded_rng(0, "t")))
    assert len(own) == 2, "the sample recording's two coughs are heard"
    anchors = maker.shifted_anchors(own, own[0], 50, window, pre_roll, seeded_rng(1, "t"))
    assert len(anchors) > 10
    for a in anchors:
        assert min(abs(a - o) for o in own) >= 0.25 * RATE, "never at (or near) an onset the detector heard"
        assert a - pre_roll <= own[0] < a - pre_roll + window or a > own[0], "the onset is in the window, or before it"
        assert own[0] - (window - pre_roll) < a <= own[0] + SHIFT_AFTER_S * RATE
    assert maker.shifted_anchors([0, RATE // 10], 0, 5, window, pre_roll, seeded_rng(1, "t")) != [], "room beside"
    crowded = list(range(-RATE, RATE, RATE // 10))  # onsets every 0.1 s: no anchor is clear of them all
    assert maker.shifted_anchors(crowded, 0, 5, window, pre_roll, seeded_rng(1, "t")) == []
    kw = dict(window=window, pre_roll=pre_roll, seed=0, per_clip=2, room_label="not_cough", progress=False)
    without = training_windows(coughs, maker, ("cough", "not_cough"), **kw)
    shifted = training_windows(coughs, maker, ("cough", "not_cough"), shifted=2, **kw)
    assert (shifted.targets == 0).sum() == (without.targets == 0).sum()
    assert (without.targets == 1).sum() < (shifted.targets == 1).sum() <= \
        (without.targets == 1).sum() + 2 * (without.targets == 0).sum(), "at most two per scene with a cough window"
    assert np.array_equal(shifted.windows[shifted.targets == 0], without.windows[without.targets == 0]), \
        "the cough windows are the same draws"


def test_with_shifted_phases_a_coughs_later_phases_are_shifted_windows_never_its_own():
    from edge.windows import cut_window
    from trainer.context import ContextSettings, SceneMaker, seeded_rng
    from trainer.stream import single_event
    from trainer.train import training_windows

    clip, room = _clips(DATA / "covid-sample", 5)[4], _clips(DATA / "room-sample")
    clip.label = "cough"
    window, pre_roll = RATE, RATE // 4
    maker = SceneMaker(ContextSettings(level_min_db=25, level_max_db=25), room, window)
    phases, plain = [], []
    for k in range(4):  # the scenes training_windows makes, and the onsets heard in each
        scene = maker.scene(clip, seeded_rng(0, "train", clip.sha256, k))
        own, _ = maker.split_anchors(scene)
        start, end = (scene.start + x for x in single_event(clip.audio, RATE))
        later = [o for o in own if start + 0.15 * RATE <= o < end]  # inside the cough, after its start
        phases += [cut_window(scene.audio, 0, o, window, pre_roll) for o in later]
        plain += [cut_window(scene.audio, 0, o, window, pre_roll) for o in own if o not in later]
    assert phases and plain, "the sample cough's later phase is heard as an onset of its own"
    kw = dict(window=window, pre_roll=pre_roll, seed=0, per_clip=4, room_label="not_cough", progress=False,
              shifted=2, shifted_clear_s=0.15)
    ws = training_windows([clip], maker, ("cough", "not_cough"), shifted_phases=True, **kw)
    held = lambda w, pool: any(np.array_equal(w, p) for p in pool)  # noqa: E731
    assert all(held(w, plain) and not held(w, phases) for w in ws.windows[ws.targets == 0]), "its own: the cough's start"
    assert any(held(w, phases) for w in ws.windows[ws.targets == 1]), "a later phase is a shifted window"


def test_nan_and_inf_samples_are_silenced_counted_and_do_not_deafen_the_detector():
    from edge.pipeline import Pipeline
    from test_pure import _RecordingModel

    rng = np.random.default_rng(4)
    audio = (0.002 * rng.standard_normal(RATE * 8)).astype(np.float32)
    audio[RATE: RATE + 10] = np.nan
    audio[RATE + 10: RATE + 12] = np.inf
    audio[5 * RATE: 5 * RATE + 3200] += (0.5 * rng.standard_normal(3200)).astype(np.float32)
    audio[7 * RATE] = 1.0  # one clipped sample near the end
    detector = _RecordingModel("det", RATE, RATE // 4, [0.9, 0.1])
    events = []
    pipe = Pipeline(detector, _RecordingModel("cls", RATE, RATE // 4, [0.7, 0.3]), "dev", synced=True)
    for start in range(0, audio.size, 1600):
        events += pipe.feed(audio[start:start + 1600])
    events += pipe.flush()
    assert pipe.counters.invalid == 12 and np.isfinite(pipe.onset.noise_floor_dbfs)
    assert any(abs(e.onset_sample - 5 * RATE) <= 320 for e in events), "the cough after the bad samples is heard"
    assert all(np.isfinite(w).all() for w in detector.windows)
    assert pipe.audio_health(recent_s=2.0) == "clipping" and pipe.audio_health(recent_s=0.5) == "ok"
    assert pipe.audio_health(recent_s=7.5) == "invalid"


@pytest.mark.parametrize("field", ["flux_db", "min_level_dbfs", "on_db", "refractory_ms"])
def test_onset_settings_refuse_non_finite_values(field):
    from edge.onset import OnsetSettings

    with pytest.raises(ValueError, match=f"{field} = (nan|inf) must be a finite number"):
        OnsetSettings(**{field: float("inf") if field == "on_db" else float("nan")})


def test_sensitivity_at_a_false_alarm_rate_and_the_paired_stream_difference():
    from trainer.metrics import paired_stream_difference, sensitivity_at_false_rate

    background = np.array([0.9, 0.8, 0.7, 0.1, 0.1, 0.1])
    best = np.array([0.95, 0.85, 0.75, 0.2])
    # two hours: 1 false alarm per hour lets two background sounds through, so the threshold is the third, 0.7
    assert sensitivity_at_false_rate(best, background, hours=2.0, false_per_hour=1.0) == 0.75
    assert sensitivity_at_false_rate(best, background, hours=2.0, false_per_hour=0.0) == 0.25
    assert sensitivity_at_false_rate(best, background, hours=2.0, false_per_hour=10.0) == 1.0
    best, background = np.tile(best, 10), np.tile(background, 10)  # the same, ten times over, in 20 hours
    worse = (best - 0.5, background)
    diff = paired_stream_difference((best, background), worse, 20.0, false_per_hour=1.0, n=200, seed=0)
    sens = diff["sensitivity_at_1_per_hour"]
    assert sens["a"] == 0.75 and sens["b"] == 0.0 and sens["diff"] == 0.75
    assert sens["ci95"][0] > 0 and sens["share_of_resamples_a_better"] > 0.9
    same = paired_stream_difference((best, background), (best, background), 2.0, false_per_hour=1.0, n=50, seed=0)
    assert same["roc_auc"]["diff"] == 0 and same["roc_auc"]["ci95"] == [0.0, 0.0]
    empty = paired_stream_difference((best, background[:0]), (best, background[:0]), 2.0, false_per_hour=1.0, n=5,
                                     seed=0)
    assert empty["roc_auc"] == {"a": None, "b": None, "diff": None, "ci95": None, "share_of_resamples_a_better": None}
    assert empty["sensitivity_at_1_per_hour"]["diff"] == 0.0, "no background: every cough passes for both"
    with pytest.raises(AssertionError, match="same sounds"):
        paired_stream_difference((best, background), (best[:2], background), 2.0, false_per_hour=1.0, n=1, seed=0)
