"""Bad input to the daemon and the trainer: a clear message, and nothing already heard is lost."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import CLASSIFIER, DATA, DEMO, DETECTOR

MODELS = ["--model-detector", str(DETECTOR), "--model-classifier", str(CLASSIFIER)]


def _edge_run(source, tmp_path):
    return subprocess.run([sys.executable, "-m", "edge", "run", *MODELS, "--source", str(source), "--fast",
                           "--device-id", "t", "--device-outbox", str(tmp_path / "outbox.sqlite")],
                          capture_output=True, text=True, timeout=120)


def test_a_decode_error_midway_ends_the_run_after_publishing_what_was_heard(tmp_path):
    raw = bytearray(DEMO.read_bytes())
    cut = int(len(raw) * 0.6)
    raw[cut:cut + 5000] = b"\x00" * 5000  # the FLAC decoder loses sync about 17.5 s in
    corrupt = tmp_path / "corrupt.flac"
    corrupt.write_bytes(bytes(raw))
    whole, broken = _edge_run(DEMO, tmp_path / "a"), _edge_run(corrupt, tmp_path / "b")
    assert whole.returncode == 0 and broken.returncode == 1
    assert "decoding failed" in broken.stderr and "Traceback" not in broken.stderr
    before = [e["onset_sample"] for e in map(json.loads, whole.stdout.splitlines()) if e["onset_sample"] < 16 * 16000]
    heard = [e["onset_sample"] for e in map(json.loads, broken.stdout.splitlines())]
    assert before and heard[:len(before)] == before, "every cough before the damage is published"


def test_trainer_data_errors_are_clear(tmp_path):
    from trainer.data import ManifestError, load_manifest, relabel

    rows = (DATA / "covid-sample" / "manifest.csv").read_text().splitlines()
    bom = tmp_path / "excel.csv"  # Excel writes a UTF-8 byte order mark
    bom.write_text("\ufeff" + "\n".join(r.replace("audio/", str(DATA / "covid-sample" / "audio") + "/") for r in rows),
                   encoding="utf-8")
    assert len(load_manifest(bom)) == len(rows) - 1
    spaced = tmp_path / "spaced.csv"
    spaced.write_text("path,label\na.wav,positive \nb.wav,negative\n")
    with pytest.raises(ManifestError, match=r"spaced.csv:2: label 'positive ' has leading or trailing spaces"):
        load_manifest(spaced)
    one = tmp_path / "one.csv"
    one.write_text("path,label\na.wav,positive\nb.wav,positive\n")
    with pytest.raises(ManifestError, match="only one label"):
        relabel(load_manifest(one), "positive")


def test_trainer_refuses_an_out_that_is_a_file(tmp_path, capsys):
    from trainer.__main__ import main

    (tmp_path / "f.txt").write_text("x")
    assert main(["distill", "--data", str(DATA / "covid-sample"), "--out", str(tmp_path / "f.txt")]) == 2
    assert "run.out" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--onset-band-low-hz", "7990", "--onset-band-high-hz", "7995"], "holds no FFT bin"),
    (["--onset-max-duration-ms", "1e30"], "max_duration_ms = 1e+30 must be at most 10000"),
    (["--onset-hangover-ms", "inf"], "onset.hangover_ms"),
])
def test_onset_settings_that_would_deafen_or_grow_memory_are_refused(tmp_path, flags, message):
    result = subprocess.run([sys.executable, "-m", "edge", "run", *MODELS, "--source", str(DEMO), "--fast",
                             "--device-outbox", str(tmp_path / "o.sqlite"), *flags],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_anti_phase_stereo_is_heard_and_a_damaged_rate_is_refused(tmp_path):
    import numpy as np
    import soundfile as sf

    audio, rate = sf.read(str(DEMO), dtype="float32")
    sf.write(str(tmp_path / "anti.wav"), np.stack([audio, -audio], axis=1), rate)
    mono = _edge_run(DEMO, tmp_path / "m")
    anti = _edge_run(tmp_path / "anti.wav", tmp_path / "a")
    assert anti.returncode == 0 and "cancel each other out" in anti.stderr
    assert len(anti.stdout.splitlines()) == len(mono.stdout.splitlines()) >= 3
    sf.write(str(tmp_path / "one_hz.wav"), audio[:480], 1)
    bad = _edge_run(tmp_path / "one_hz.wav", tmp_path / "b")
    assert bad.returncode == 2 and "header says 1 Hz" in bad.stderr and "Traceback" not in bad.stderr


def test_devices_says_so_when_there_is_no_input_device():
    import sounddevice as sd

    if any(d["max_input_channels"] > 0 for d in sd.query_devices()):
        pytest.skip("this machine has an input device")
    result = subprocess.run([sys.executable, "-m", "edge", "devices"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "no input device found" in result.stderr
