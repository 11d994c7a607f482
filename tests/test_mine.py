"""`trainer mine`: the daemon's false alarms on a training-split stream, as hard negatives to train on."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import DATA

torch = pytest.importorskip("torch")

RATE = 16000


def _clip(name: str, label: str = "breathing", seconds: int = 60):
    from trainer.data import Clip

    return Clip(Path(f"{name}.flac"), label, name, audio=np.zeros(seconds * RATE, dtype=np.float32))


def test_false_alarms_are_the_events_far_from_coughs_told_by_the_recording_heard_there():
    from trainer.context import RoomPiece
    from trainer.mine import distinct_spots, false_alarms
    from trainer.stream import Placed, StreamEvent

    r = RATE
    calm, loud, laugh = _clip("calm"), _clip("loud"), _clip("laugh", "other")
    room = [RoomPiece(calm, 3 * r, 0, 30 * r), RoomPiece(loud, 0, 30 * r - 320, 30 * r)]
    truth = [Placed("cough", "positive", "app", "c.flac", 20.0, 10 * r, 11 * r),
             Placed("sound", "laugh", "", "laugh.flac", 20.0, 40 * r, 41 * r),
             Placed("sound", "noise burst", "", "<noise burst test 0>", 20.0, 50 * r, 51 * r)]
    events = [StreamEvent(10 * r + 100, 0.9, 0.0),   # the cough's own event
              StreamEvent(11 * r + r // 2, 0.8, 0.0),  # within 1 s of the cough: its window may hold it
              StreamEvent(5 * r, 0.7, 0.0),          # the room: calm, 3 + 5 s into its recording
              StreamEvent(20 * r, 0.6, 0.0),         # calm again, 23 s in
              StreamEvent(40 * r + r // 10, 0.5, 0.0),  # on the placed laugh, 0.1 s after its start
              StreamEvent(50 * r, 0.9, 0.0),         # on a synthetic sound: no recording to keep
              StreamEvent(35 * r, 0.4, 0.0)]         # the room: loud, 5.02 s into it
    alarms = false_alarms(truth, events, room, {"laugh.flac": laugh}, 60 * r, r)
    got = [(a.origin, a.clip.group, round(a.second, 2), a.cough_score) for a in alarms]
    assert got == [("room", "calm", 8.0, 0.7), ("room", "calm", 23.0, 0.6), ("sound", "laugh", 0.1, 0.5),
                   ("room", "loud", 5.02, 0.4)]
    # the room replays a recording: the same spot heard again is one spot
    replay = [RoomPiece(calm, 0, 0, 20 * r), RoomPiece(calm, 0, 20 * r, 20 * r)]
    twice = false_alarms([], [StreamEvent(5 * r, 0.9, 0.0), StreamEvent(25 * r + 1600, 0.9, 0.0),
                              StreamEvent(25 * r + 8000, 0.9, 0.0)], replay, {}, 40 * r, r)
    assert [round(a.second, 2) for a in twice] == [5.0, 5.1, 5.5]
    assert [round(a.second, 2) for a in distinct_spots(twice, 0.2)] == [5.0, 5.5]
    assert len(distinct_spots(twice, 0.0)) == 3


def test_mine_settings_are_checked():
    from trainer.mine import MineSettings

    for bad, needle in (({"after_s": 1.0}, "mine.after_s = 1.0"), ({"before_s": 0}, "mine.before_s = 0"),
                        ({"label": "a,b"}, "mine.label = 'a,b'"), ({"max_tagger_score": 0}, "max_tagger_score = 0")):
        with pytest.raises(ValueError, match=needle.replace(".", r"\.")):
            MineSettings(**bad).validate()


@pytest.fixture(scope="module")
def peak_tagger(tmp_path_factory):
    """A real ONNX file shaped like YAMNet (``waveform [1, 1600]`` -> ``scores``) whose Cough score rises with the
    window's peak."""

    class Tiny(torch.nn.Module):
        def forward(self, waveform):
            peak = waveform.abs().amax(dim=1, keepdim=True)
            return torch.sigmoid(torch.cat([peak, 400 * peak - 4], dim=1))

    folder = tmp_path_factory.mktemp("tagger")
    torch.onnx.export(Tiny(), (torch.zeros(1, 1600),), str(folder / "tiny.onnx"), input_names=["waveform"],
                      output_names=["scores"], opset_version=17, dynamo=False)
    (folder / "class_map.csv").write_text("index,mid,display_name\n0,/m/a,Speech\n1,/m/b,Cough\n")
    return folder / "tiny.onnx"


@pytest.mark.slow
def test_mine_writes_the_training_splits_false_alarms_as_a_manifest_distill_reads(tiny_model, peak_tagger,
                                                                                  tmp_path, capsys):
    from trainer.__main__ import main
    from trainer.data import load_audio, load_manifest, split_of

    args = ["mine", "--model-detector", str(tiny_model), "--model-classifier", str(tiny_model),
            "--model-detector-threshold", "0", "--stream-coughs", str(DATA / "covid-sample"),
            "--stream-sounds", str(DATA / "room-sample"), "--stream-val-fraction", "0.25",
            "--stream-test-fraction", "0.25", "--stream-gap-min-s", "1", "--stream-gap-max-s", "2",
            "--stream-split", "test"]  # taken as train whatever it says
    assert main([*args, "--mine-tagger", "", "--out", str(tmp_path / "all")]) == 0
    summary = json.loads((tmp_path / "all" / "mined.json").read_text())
    assert summary["stream_settings"]["split"] == "train"
    assert summary["events"] > summary["false_alarms"] >= summary["distinct_spots"] == summary["kept"] > 0
    assert summary["suspect_coughs"] == 0 and summary["detector"]["threshold"] == 0.0
    rows = list(csv.DictReader(open(tmp_path / "all" / "manifest.csv")))
    assert len(rows) == summary["kept"] and {r["label"] for r in rows} == {"mined"}
    assert {r["source"] for r in rows} == {"mined"} and {r["origin"] for r in rows} <= {"room", "sound"}
    assert {r["licence"] for r in rows} == {"unknown"}, "the samples' manifests state none, and their paths name no " \
                                                        "known corpus"
    assert all(split_of(r["group"], val=0.25, test=0.25, seed=0) == "train" for r in rows), \
        "each stays in the training split by the group it came from"
    clips = load_audio(load_manifest(tmp_path / "all"), RATE, min_samples=RATE // 4, progress=False)
    assert len(clips) == len(rows) and all(c.audio.size <= round(1.6 * RATE) for c in clips)
    assert sum(c.audio.size == round(1.6 * RATE) for c in clips) >= len(clips) - 1, "0.75 s before, 0.85 s after"
    assert "farther than 1 s from every placed cough" in (tmp_path / "all" / "MINED.md").read_text()

    assert main([*args, "--mine-tagger", f"onnx:{peak_tagger}", "--mine-max-tagger-score", "0.5",
                 "--out", str(tmp_path / "tagged")]) == 0
    tagged = json.loads((tmp_path / "tagged" / "mined.json").read_text())
    assert tagged["distinct_spots"] == summary["distinct_spots"], "the same stream and daemon"
    assert tagged["suspect_coughs"] + tagged["kept"] == tagged["distinct_spots"] and tagged["suspect_coughs"] > 0
    kept = list(csv.DictReader(open(tmp_path / "tagged" / "manifest.csv")))
    assert all(float(r["tagger_score"]) < 0.5 for r in kept)
    capsys.readouterr()
    assert main([*args, "--mine-after-s", "1.5", "--out", str(tmp_path / "bad")]) == 2
    assert "mine.after_s = 1.5" in capsys.readouterr().err
