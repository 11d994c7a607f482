"""`trainer distill` end to end on real audio and a tiny teacher, then evaluate and re-export its output."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import DATA

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from trainer.__main__ import main

    out = tmp_path_factory.mktemp("run") / "covid"
    rc = main(["distill", "--data", str(DATA / "covid-sample"), "--teacher", "preset:tiny", "--teacher-epochs", "2",
               "--student-epochs", "2", "--student-widths", "8,16", "--student-pooling", "meanstd",
               "--student-band-stats", "--data-group-by", "source",
               "--data-val-fraction", "0.25", "--data-test-fraction", "0.25", "--run-bootstrap", "50",
               "--data-background", str(DATA / "room-sample"), "--out", str(out)])
    assert rc == 0
    return out


@pytest.mark.slow
def test_distill_writes_a_complete_run(run):
    for name in ("teacher/coughwatch.json", "student/coughwatch.json", "student/model.pt", "student.onnx",
                 "student.int8.onnx", "report.json", "report.md", "MODEL_CARD.md", "roc.png", "confusion.png",
                 "training.png", "settings.json", "splits.csv", "teacher_cache.pt"):
        assert (run / name).is_file(), name
    report = json.loads((run / "report.json").read_text())
    for model in ("teacher", "student", "student.onnx", "student.int8.onnx"):
        pooled = report["results"][model]["pooled"]
        assert 0.0 <= pooled["roc_auc"] <= 1.0 and len(pooled["roc_auc_ci95"]) == 2
        assert set(report["results"][model]["by_group"]) == {"call-center", "telegram"}
    assert report["onnx_parity"]["max_abs_diff"] <= 1e-4
    from edge.inference import Model

    for name in ("student.onnx", "student.int8.onnx"):  # each file is scored at the threshold it carries
        assert report["results"][name]["pooled"]["threshold"] == Model(run / name).info.threshold
    assert report["windows"]["test"]["windows"] == report["results"]["student"]["pooled"]["n"]
    assert {"loss", "kl", "ce", "val_auc"} <= set(report["history"]["student"][0])
    assert {"classical (recording)", "classical (window)", "source only", "duration only"} == set(report["baselines"])
    assert set(report["comparisons"]) == {"teacher", *report["baselines"]}
    for c in report["comparisons"].values():
        assert -1.0 <= c["ci95"][0] <= c["diff"] <= c["ci95"][1] <= 1.0
    md = (run / "report.md").read_text()
    assert "## Baselines on the same split" in md and "| classical (recording) | " in md
    assert (run / "student.int8.onnx").stat().st_size <= 250_000
    card = (run / "MODEL_CARD.md").read_text()
    assert "Not a diagnosis" in card and "trainer distill" in card
    splits = [line.split(",") for line in (run / "splits.csv").read_text().splitlines()[1:]]
    by_split = {}
    for split, *_rest, sha in splits:
        by_split.setdefault(split, set()).add(sha)
    assert not (by_split["train"] & by_split["test"] or by_split["val"] & by_split["test"])
    assert "now carries" not in md


def test_a_threshold_written_after_export_is_named_in_the_report(run, tmp_path):
    import shutil

    from trainer.export import set_threshold
    from trainer.report import refresh_documents

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    set_threshold(copy / "student.int8.onnx", 0.123)  # as `trainer stream --choose-detector-threshold` does
    refresh_documents(copy)
    for doc in ("report.md", "MODEL_CARD.md"):
        text = (copy / doc).read_text()
        assert "`student.int8.onnx` now carries threshold 0.123" in text and "`student.onnx` now carries" not in text


@pytest.mark.slow
def test_exported_model_passes_the_edge_contract_and_matches_pytorch(run):
    import torch

    from edge.inference import Model
    from trainer.export import run_onnx, seeded_input
    from trainer.models import load_checkpoint

    model = load_checkpoint(run / "student")
    x = seeded_input(model.spec, seed=7)
    with torch.no_grad():
        expected = torch.softmax(model(torch.from_numpy(x)), -1).numpy()
    assert np.abs(run_onnx(run / "student.onnx", x) - expected).max() < 1e-4
    info = Model(run / "student.int8.onnx").info
    assert info.labels == ("positive", "negative") and info.window_samples == 16000 and 0 <= info.threshold <= 1


@pytest.mark.slow
def test_evaluate_and_reexport(run, tmp_path, capsys):
    from trainer.__main__ import main

    assert main(["evaluate", str(run / "student.int8.onnx"), "--data", str(DATA / "covid-sample"),
                 "--data-background", str(DATA / "room-sample"), "--data-group-by", "source", "--run-bootstrap", "20",
                 "--out", str(tmp_path / "all")]) == 0
    metrics = json.loads((tmp_path / "all/evaluate.json").read_text())
    assert metrics["scenes"] == "context" and metrics["threshold_source"] == "model" and metrics["split"] == "all"
    assert metrics["pooled"]["n"] == metrics["windows"] >= 31 - metrics["recordings_without_onset"]
    assert "telegram" in metrics["by_group"]
    # the run's own settings: its manifests, rooms and split rule; its test split is what distill scored
    assert main(["evaluate", str(run / "student.int8.onnx"), "--config", str(run / "settings.json"),
                 "--split", "test", "--out", str(tmp_path / "test")]) == 0
    test = json.loads((tmp_path / "test/evaluate.json").read_text())
    report = json.loads((run / "report.json").read_text())
    assert test["split"] == "test" and test["manifest"] == str(DATA / "covid-sample")
    assert 0 < test["windows"] < metrics["windows"] and set(test["by_group"]) <= {"call-center", "telegram"}
    assert test["windows"] == report["windows"]["test"]["windows"]
    assert main(["export", str(run / "student"), "--out", str(tmp_path / "again")]) == 0
    from edge.inference import Model

    assert Model(tmp_path / "again/student.onnx").info.positive_label == "positive"
    assert Model(tmp_path / "again/student.int8.onnx").info.labels == ("positive", "negative")


@pytest.mark.slow
def test_w2v_small_student_distills_and_exports(tmp_path):
    from edge.inference import Model
    from trainer.__main__ import main

    out = tmp_path / "w2v"
    assert main(["distill", "--data", str(DATA / "covid-sample"), "--teacher", "preset:tiny", "--teacher-epochs", "1",
                 "--student", "w2v-small", "--student-layers", "1", "--student-epochs", "1",
                 "--data-val-fraction", "0.25", "--data-test-fraction", "0.25", "--run-bootstrap", "20",
                 "--data-background", str(DATA / "room-sample"), "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["onnx_parity"]["max_abs_diff"] <= 1e-4
    assert report["settings"]["student"]["kind"] == "w2v-small"
    assert Model(out / "student.int8.onnx").info.labels == ("positive", "negative")


@pytest.mark.slow
def test_stream_benchmark_runs_the_daemon_pipeline_on_held_out_audio(run, tmp_path, capsys):
    from trainer.__main__ import main

    model = str(run / "student.int8.onnx")
    args = ["stream", "--model-detector", model, "--model-classifier", model,
            "--stream-coughs", str(DATA / "covid-sample"), "--stream-sounds", str(DATA / "room-sample"),
            "--stream-val-fraction", "0.25", "--stream-test-fraction", "0.25", "--stream-levels-db", "10,35",
            "--stream-gap-min-s", "1", "--stream-gap-max-s", "2"]
    assert main([*args, "--out", str(tmp_path / "a"), "--audio", str(tmp_path / "s.flac")]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    a, b = (json.loads((tmp_path / x / "stream.json").read_text()) for x in "ab")
    for result in (a, b):
        result.pop("real_time_factor"), result.pop("command")
    assert a == b, "deterministic by seed"
    assert a["coughs"]["n"] >= 1 and set(a["coughs_by_level"]) == {"10", "35"}
    assert a["models"]["detector"]["threshold"] == a["models"]["classifier"]["threshold"]
    assert "classifier_on_events" in a and "by_group" in a["classifier_clip_level"]
    gate = a["onset_gate"]["coughs"]
    assert gate["n"] == a["coughs"]["n"] and gate["with_event"] >= a["coughs"]["with_event"], \
        "every event is at an onset, so the onset detector alone finds at least what the pipeline does"
    assert a["onset_settings"]["merge_gap_ms"] == 100.0
    clip = a["detector_clip_level"]
    assert clip["pooled"]["coughs"] == a["coughs"]["n"] and clip["pooled"]["sounds"] == a["sounds"]["n"]
    assert clip["given_a_window"]["pooled"]["coughs"] == a["onset_gate"]["coughs"]["with_event"]
    assert "Clip by clip" in (tmp_path / "a" / "stream.md").read_text()
    assert main([*args, "--onset-merge-gap-ms", "0", "--stream-sound-class-by", "participant",
                 "--stream-synthetic-per-kind", "2", "--out", str(tmp_path / "c")]) == 0
    c = json.loads((tmp_path / "c" / "stream.json").read_text())
    assert c["onset_settings"]["merge_gap_ms"] == 0.0 and c["coughs"]["n"] == a["coughs"]["n"]
    assert "label" not in c["sounds_by_class"] and len(c["sounds_by_class"]) >= 4
    assert all(c["sounds_by_class"][k]["n"] == 2 for k in ("noise burst", "clap", "tone"))
    assert main([*args, "--compare-detector", model, "--out", str(tmp_path / "d")]) == 0
    d = json.loads((tmp_path / "d" / "compare.json").read_text())
    assert d["coughs"] == a["coughs"]["n"], "the same stream"
    for figure in d["difference"].values():  # undefined (None, valid JSON) only where the stream has no background
        assert figure["diff"] in (0.0, None) and figure["share_of_resamples_a_better"] in (0.0, None), \
            "a detector ties itself"
    assert d["difference"]["sensitivity_at_10_per_hour"]["diff"] == 0.0
    by_group = d["sensitivity_at_10_per_hour_by_group"]
    assert sum(g["coughs"] for g in by_group.values()) == d["coughs"] and all(g["a"] == g["b"] for g in by_group.values())
    assert main([*args, "--compare-views", "3", "--out", str(tmp_path / "v")]) == 0
    v = json.loads((tmp_path / "v" / "compare.json").read_text())
    assert v["views"] == {"a": 1, "b": 3} and v["a"] == v["b"] == model and v["coughs"] == d["coughs"]
    assert main([*args, "--compare-views", "2"]) == 2
    assert "--compare-views 2: views = 2 must be an odd whole number" in capsys.readouterr().err
    assert main([*args, "--onset-scan-ms", "100", "--out", str(tmp_path / "e")]) == 0  # the daemon scanning
    e = json.loads((tmp_path / "e" / "stream.json").read_text())
    assert e["onset_settings"]["scan_ms"] == 100.0 and e["coughs"]["n"] == a["coughs"]["n"], "the same stream"
    assert e["detector_clip_level"]["pooled"]["coughs"] == a["coughs"]["n"]
    report = (tmp_path / "e" / "stream.md").read_text()
    assert "the cough detector does not wait for it" in report and "peaks of the scanned score" in report
    truth = (tmp_path / "s.truth.csv").read_text().splitlines()
    assert truth[0].startswith("onset_s,") and len(truth) - 1 == a["coughs"]["n"] + a["sounds"]["n"]
    assert truth[0].endswith(",bursts_s") and all(row.split(",")[-1].split()[0] == "0" for row in truth[1:])
    assert "cough sensitivity" in (tmp_path / "a" / "stream.md").read_text()
    assert (tmp_path / "a" / "stream.png").stat().st_size > 0
    assert main([*args, "--out", str(tmp_path / "s.flac")]) == 2
    assert "trainer stream --out names a folder" in capsys.readouterr().err
    assert main(["stream", "--stream-coughs", "x", "--stream-sounds", "y", "--stream-split", "train"]) == 2
    assert "stream.split = 'train' must be test or val" in capsys.readouterr().err
    assert main([*args, "--stream-bout-share", "0.5", "--out", str(tmp_path / "e")]) == 0
    e = json.loads((tmp_path / "e" / "stream.json").read_text())
    assert e["coughs"]["n"] == a["coughs"]["n"] and set(e["onset_gate"]["coughs_in_bouts"]) == {"first", "next"}
    assert e["coughs_in_bouts"]["next"]["n"] == e["onset_gate"]["coughs_in_bouts"]["next"]["n"] >= 1
    capsys.readouterr()
    assert main([*args, "--stream-channel", "telephone"]) == 2, "the sample's manifest names no telephone recording"
    assert "no telephone cough recordings in the test split" in capsys.readouterr().err


@pytest.mark.slow
def test_a_verifier_sweep_records_its_detector_and_auto_sets_the_shipped_verifier_aside(run, tmp_path):
    """`--choose-detector-threshold --model-verifier DIR` writes the mixed score's threshold and the detector it
    was chosen with into the folder; the stream then runs with it, and ``auto`` (the shipped verifier, tuned with
    the shipped detector) runs this run's detector alone and says why."""
    import shutil

    from conftest import ROOT
    from edge.inference import Model
    from edge.verifier import read_spec
    from trainer.__main__ import main

    model = str(run / "student.int8.onnx")
    folder = tmp_path / "verifier"
    shutil.copytree(ROOT / "models" / "cough-verifier", folder)
    args = ["stream", "--model-detector", model, "--model-classifier", model,
            "--stream-coughs", str(DATA / "covid-sample"), "--stream-sounds", str(DATA / "room-sample"),
            "--stream-val-fraction", "0.25", "--stream-test-fraction", "0.25", "--stream-levels-db", "10,35",
            "--stream-gap-min-s", "1", "--stream-gap-max-s", "2"]
    assert main([*args, "--out", str(tmp_path / "alone")]) == 0
    alone = json.loads((tmp_path / "alone" / "stream.json").read_text())
    assert "tuned with the cough detector created" in alone["models"]["verifier"]["none"]
    assert main([*args, "--model-verifier", str(folder), "--out", str(tmp_path / "refused")]) == 2, \
        "its threshold was chosen with the shipped detector"
    assert main([*args, "--stream-split", "val", "--choose-detector-threshold", "--stream-max-false-per-hour", "1e6",
                 "--model-verifier", str(folder), "--out", str(tmp_path / "sweep")]) == 0
    sweep = json.loads((tmp_path / "sweep" / "threshold-sweep.json").read_text())
    assert all(r["background_wideband_per_hour"] >= 0 for r in sweep["sweep"]), "the rate a microphone would hear"
    spec = read_spec(folder)
    assert spec.tuned_for == Model(model).info.created and spec.threshold == sweep["chosen"]["threshold"]
    assert sweep["previous_threshold"] == read_spec(ROOT / "models" / "cough-verifier").threshold
    room = sweep["room"]
    assert 1 <= room["speakers"] <= room["recordings"] and room["times_heard"] > 1, "what the chosen rate rests on"
    assert main([*args, "--model-verifier", str(folder), "--out", str(tmp_path / "mixed")]) == 0
    mixed = json.loads((tmp_path / "mixed" / "stream.json").read_text())
    assert mixed["models"]["verifier"]["path"] == str(folder)
    assert mixed["models"]["detector"]["threshold"] == spec.threshold
    assert mixed["coughs"]["n"] == alone["coughs"]["n"], "the same stream"
    assert "with the verifier" in (tmp_path / "mixed" / "stream.md").read_text()
    assert "alone, threshold" in (tmp_path / "alone" / "stream.md").read_text()
