"""Models that pass the contract's keys but cannot run: refused at load, by `edge check`, `edge run` and model push.

Real ONNX files, real onnxruntime sessions: the trainer's tiny student with rewritten metadata, and small graphs
built with `onnx.helper` that load but fail (or answer nonsense) at run time.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CLASSIFIER, DEMO, DETECTOR, ROOT

CONTRACT = {"labels": '["cough", "not_cough"]', "positive_label": "cough", "sample_rate": "16000",
            "window_samples": "16000", "threshold": "0.5", "teacher": "none", "train_data": "none (test)",
            "metrics": "{}", "created": "2026-01-01T00:00:00+00:00", "version": "1"}


def with_metadata(src: Path, dest: Path, **changes: str) -> Path:
    """A copy of ``src`` with some metadata_props replaced (the graph is untouched)."""
    import onnx

    from trainer.export import set_metadata

    proto = onnx.load(str(src))
    set_metadata(proto, {**{p.key: p.value for p in proto.metadata_props}, **changes})
    onnx.save(proto, str(dest))
    return dest


def graph_model(dest: Path, kind: str) -> Path:
    """A contract-shaped graph (`audio` [batch, samples] -> `probs`) that loads but misbehaves at run time."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    index = {"fails": [0, 99_999_999], "nan": [0, 1], "out_of_range": [0, 1], "wrong_shape": [0, 1]}[kind]
    inits = [numpy_helper.from_array(np.array(index, np.int64), "index"),
             numpy_helper.from_array(np.array(5.0, np.float32), "five")]
    nodes = [helper.make_node("Gather", ["audio", "index"], ["picked" if kind != "fails" else "probs"], axis=1)]
    if kind == "wrong_shape":  # columns = samples // 5000 (3 for the contract's window): known only at run time
        inits += [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in (("one", 1), ("zero", 0),
                                                                                 ("per", 5000))]
        nodes[:1] = [helper.make_node("Shape", ["audio"], ["shape"]),
                     helper.make_node("Gather", ["shape", "one"], ["samples"], axis=0),
                     helper.make_node("Div", ["samples", "per"], ["count"]),
                     helper.make_node("Range", ["zero", "count", "one"], ["index_run"]),
                     helper.make_node("Gather", ["audio", "index_run"], ["picked"], axis=1)]
    if kind == "nan":  # 0 / 0 on silence
        nodes.append(helper.make_node("Div", ["picked", "picked"], ["probs"]))
    elif kind in ("out_of_range", "wrong_shape"):
        nodes.append(helper.make_node("Add", ["picked", "five"], ["probs"]))
    columns = "n" if kind == "wrong_shape" else 2  # a symbolic width passes check_io; the run gives 3 columns
    graph = helper.make_graph(
        nodes, f"bad-{kind}", [helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["batch", "samples"])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", columns])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    for key, value in CONTRACT.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    onnx.save(proto, str(dest))
    return dest


def edge(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COUGHWATCH_")}
    env["PYTHONPATH"] = str(ROOT)
    (cwd / "empty.toml").write_text("")
    return subprocess.run([sys.executable, "-m", "edge", args[0], "--config", str(cwd / "empty.toml"), *args[1:]],
                          capture_output=True, text=True, timeout=300, cwd=cwd, env=env, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("changes, message", [
    ({"window_samples": "100"}, "'window_samples' = 100 is outside 1024..160000 samples (0.064..10 s at 16000 Hz)"),
    ({"window_samples": str(10**9)}, "'window_samples' = 1000000000 is outside 1024..160000"),
    ({"sample_rate": str(10**12)}, "'sample_rate' = 1000000000000 is outside 8000..48000 Hz"),
    ({"sample_rate": "4000"}, "'sample_rate' = 4000 is outside 8000..48000 Hz"),
])
def test_metadata_out_of_bounds_is_refused_at_load_naming_the_bound(tmp_path, tiny_model, changes, message):
    from edge.contract import ContractError
    from edge.inference import Model

    bad = with_metadata(tiny_model, tmp_path / "bad.onnx", **changes)
    with pytest.raises(ContractError) as err:
        Model(bad)
    assert str(bad) in str(err.value) and "tiny" in str(err.value) and message in str(err.value)


@pytest.mark.parametrize("kind, message", [
    ("fails", "onnxruntime: "),
    ("nan", "output 'probs' is not finite"),
    ("out_of_range", "output 'probs' is outside [0, 1]"),
    ("wrong_shape", "output 'probs' has shape [2, 3], expected [2, 2] for labels ['cough', 'not_cough']"),
])
def test_a_model_that_cannot_run_is_refused_at_load_with_the_reason(tmp_path, kind, message):
    from edge.contract import ContractError
    from edge.inference import Model

    bad = graph_model(tmp_path / f"{kind}.onnx", kind)
    with pytest.raises(ContractError) as err:
        Model(bad)
    text = str(err.value)
    assert f"model 'bad-{kind}' failed a test inference on silence and noise" in text and message in text, text
    if kind == "fails":
        assert "out of bounds" in text or "indices" in text, text  # onnxruntime's own words are passed on


def test_shipped_and_fixture_models_pass_the_load_time_inference(tiny_model):
    from edge.inference import Model

    for path in (DETECTOR, CLASSIFIER, tiny_model):
        Model(path)


def test_edge_check_and_run_refuse_bad_models_with_one_clear_line(tmp_path, tiny_model):
    short = with_metadata(tiny_model, tmp_path / "short.onnx", window_samples="100")
    result = edge("check", "--skip-mic", "--model-detector", str(DETECTOR), "--model-classifier", str(short),
                  cwd=tmp_path)
    assert result.returncode == 1 and "FAIL  models:" in result.stdout and "window_samples' = 100" in result.stdout
    failing = graph_model(tmp_path / "fails.onnx", "fails")
    result = edge("check", "--skip-mic", "--model-detector", str(DETECTOR), "--model-classifier", str(failing),
                  cwd=tmp_path)
    assert result.returncode == 1 and "failed a test inference" in result.stdout, result.stdout
    result = edge("run", "--source", str(DEMO), "--fast", "--model-detector", str(DETECTOR), "--model-classifier",
                  str(failing), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "edge run: error:" in result.stderr and "failed a test inference" in result.stderr


def test_detector_and_classifier_rates_that_differ_are_refused_by_run_and_check(tmp_path, tiny_model):
    slow = with_metadata(tiny_model, tmp_path / "tiny8k.onnx", sample_rate="8000", window_samples="8000",
                         pre_roll_samples="2000")
    models = ["--model-detector", str(slow), "--model-classifier", str(CLASSIFIER)]
    result = edge("run", "--source", str(DEMO), "--fast", *models, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "expects 8000 Hz audio" in errors[0] and "expects 16000 Hz" in errors[0], errors
    assert "share one sample rate" in errors[0]
    result = edge("check", "--skip-mic", *models, cwd=tmp_path)
    assert result.returncode == 1 and "FAIL  models:" in result.stdout and "share one sample rate" in result.stdout


def test_model_push_refuses_a_failing_model_locally_and_rolls_back_remotely(tmp_path, tiny_model):
    from conftest import LocalRunner
    from deploy.model_push import push_model
    from deploy.sdcard import DeployError
    from edge.contract import ContractError

    models = tmp_path / "models"
    for name, src in (("cough-detector", DETECTOR), ("covid-screen", CLASSIFIER)):
        (models / name).mkdir(parents=True)
        shutil.copy(src, models / name / "student.int8.onnx")
    current = models / "covid-screen/student.int8.onnx"
    check = (f"{sys.executable} -m edge check --skip-mic --config {tmp_path}/empty.toml "
             f"--model-detector {models}/cough-detector/student.int8.onnx --model-classifier {current}")
    (tmp_path / "empty.toml").write_text("")
    failing = graph_model(tmp_path / "fails.onnx", "fails")
    with pytest.raises(ContractError, match="failed a test inference"):
        push_model(LocalRunner(), failing, models_dir=str(models), restart="true", check=check)
    assert current.read_bytes() == CLASSIFIER.read_bytes() and not (current.parent / "student.int8.onnx.prev").exists()
    with pytest.raises(DeployError, match="rolled back(.|\n)*failed a test inference"):
        push_model(LocalRunner(), failing, models_dir=str(models), restart="true", check=check,
                   validate_locally=False)
    assert current.read_bytes() == CLASSIFIER.read_bytes()
    slow = with_metadata(tiny_model, tmp_path / "tiny8k.onnx", sample_rate="8000", window_samples="8000",
                         pre_roll_samples="2000")  # fine alone; the Pi's check finds it disagrees with the detector
    with pytest.raises(DeployError, match="rolled back(.|\n)*share one sample rate"):
        push_model(LocalRunner(), slow, models_dir=str(models), restart="true", check=check)
    assert current.read_bytes() == CLASSIFIER.read_bytes()


def test_model_push_says_when_a_new_detector_runs_without_the_shipped_verifier(tmp_path, capsys):
    from conftest import LocalRunner
    from deploy.model_push import push_model

    models = tmp_path / "models"
    for name, src in (("cough-detector", DETECTOR), ("covid-screen", CLASSIFIER)):
        (models / name).mkdir(parents=True)
        shutil.copy(src, models / name / "student.int8.onnx")
    (tmp_path / "empty.toml").write_text("")
    check = (f"{sys.executable} -m edge check --skip-mic --config {tmp_path}/empty.toml "
             f"--model-detector {models}/cough-detector/student.int8.onnx "
             f"--model-classifier {models}/covid-screen/student.int8.onnx")
    push_model(LocalRunner(), DETECTOR, role="detector", models_dir=str(models), restart="true", check=check)
    assert "note:" not in capsys.readouterr().out, "the shipped detector: the shipped verifier is tuned with it"
    retrained = with_metadata(DETECTOR, tmp_path / "retrained.onnx", created="2027-01-01T00:00:00+00:00")
    push_model(LocalRunner(), retrained, role="detector", models_dir=str(models), restart="true", check=check)
    out = capsys.readouterr().out
    assert "is now the detector" in out and "note: " in out and "created 2027-01-01T00:00:00+00:00" in out, out
    assert "(the detector runs alone)" in out


def events_of(result) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def test_the_shipped_verifier_is_set_aside_for_another_detector_and_refused_when_named(tmp_path):
    """``auto`` runs the shipped verifier only with the detector its threshold was chosen with: with another one
    (a pushed or retrained detector: another ``created`` stamp) or while scanning, the daemon runs without it and
    says so; a verifier named outright is refused instead, unless a detector threshold is given."""
    shipped = ROOT / "models" / "cough-verifier"
    other = with_metadata(DETECTOR, tmp_path / "retrained.onnx", created="2027-01-01T00:00:00+00:00")
    alone = events_of(edge("run", "--source", str(DEMO), "--fast", "--model-verifier", "", cwd=tmp_path))
    mixed = events_of(edge("run", "--source", str(DEMO), "--fast", cwd=tmp_path))
    assert alone and mixed and [e["cough_score"] for e in mixed] != [e["cough_score"] for e in alone]
    result = edge("run", "--source", str(DEMO), "--fast", "--model-detector", str(other), cwd=tmp_path)
    assert result.returncode == 0 and "level=WARNING" in result.stderr and "no verifier: " in result.stderr
    assert "created 2027-01-01T00:00:00+00:00" in result.stderr, result.stderr
    assert [(e["onset_sample"], e["cough_score"]) for e in events_of(result)] == [
        (e["onset_sample"], e["cough_score"]) for e in alone]
    result = edge("check", "--skip-mic", "--model-detector", str(other), cwd=tmp_path)
    assert result.returncode == 0 and "no verifier: " in result.stdout, result.stdout
    for command in (["run", "--source", str(DEMO), "--fast"], ["check", "--skip-mic"]):
        result = edge(*command, "--model-detector", str(other), "--model-verifier", str(shipped), cwd=tmp_path)
        text = result.stderr if command[0] == "run" else result.stdout
        assert result.returncode == (2 if command[0] == "run" else 1) and "Traceback" not in result.stderr, text
        assert "was chosen with the cough detector created 2026-" in text and "choose it again" in text, text
    result = edge("run", "--source", str(DEMO), "--fast", "--model-detector", str(other), "--model-verifier",
                  str(shipped), "--model-detector-threshold", "0.39", cwd=tmp_path)
    assert result.returncode == 0 and events_of(result), result.stderr
    scanning = ["run", "--source", str(DEMO), "--fast", "--onset-scan-ms", "100"]
    result = edge(*scanning, cwd=tmp_path)
    assert result.returncode == 0 and "no verifier: scan_ms > 0" in result.stderr, result.stderr
    result = edge(*scanning, "--model-verifier", str(shipped), cwd=tmp_path)
    assert result.returncode == 2 and "judges the energy gate's sounds" in result.stderr, result.stderr


def test_deploy_cli_reports_a_refused_model_without_a_traceback(tmp_path):
    failing = graph_model(tmp_path / "fails.onnx", "fails")
    result = subprocess.run([sys.executable, "-m", "deploy", "model", "push", str(failing), "--host",
                             "nobody@127.0.0.1"], capture_output=True, text=True, timeout=300, cwd=ROOT,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("deploy: error:") and "failed a test inference" in result.stderr


def test_edge_run_and_check_hear_the_shipped_verifier_and_refuse_a_broken_one(tmp_path):
    shipped = ROOT / "models" / "cough-verifier"
    tuned = json.loads((shipped / "verifier.json").read_text())
    result = edge("check", "--skip-mic", cwd=tmp_path)  # verifier = auto: the shipped one
    assert result.returncode == 0 and "(auto: the shipped one, tuned with this detector): yamnet.onnx mixed in at " \
        f"{tuned['mix']:g}, threshold {tuned['threshold']:.3f}" in result.stdout, result.stdout
    result = edge("check", "--skip-mic", "--model-verifier", str(shipped), cwd=tmp_path)
    assert result.returncode == 0 and f"verifier {shipped}: yamnet.onnx mixed in at 0.3" in result.stdout, result.stdout
    result = edge("run", "--source", str(DEMO), "--fast", "--model-verifier", str(shipped), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert events and all(e["cough_score"] >= 0 for e in events)
    broken = tmp_path / "broken"
    shutil.copytree(shipped, broken)
    (broken / "yamnet.onnx").write_bytes(b"not a model")
    for command in (["run", "--source", str(DEMO), "--fast"], ["check", "--skip-mic"]):
        result = edge(*command, "--model-verifier", str(broken), cwd=tmp_path)
        text = result.stderr if command[0] == "run" else result.stdout
        assert result.returncode == (2 if command[0] == "run" else 1) and "Traceback" not in result.stderr, text
        assert "is not the file its probe was fitted on" in text, text
