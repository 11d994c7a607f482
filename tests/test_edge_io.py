"""The edge daemon against the real thing: mosquitto on loopback, onnxruntime, audio files, processes."""
from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import paho.mqtt.client as mqtt
import pytest
import soundfile as sf

from conftest import CLASSIFIER, DEMO, DETECTOR, ROOT, make_broker

MODELS = ["--model-detector", str(DETECTOR), "--model-classifier", str(CLASSIFIER)]


class Subscriber:
    def __init__(self, port: int, topic: str = "coughwatch/#", **auth) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.c = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-{time.time_ns()}")
        if auth:
            self.c.username_pw_set(auth["username"], auth["password"])
        self.c.on_connect = lambda c, u, f, rc, p: (c.subscribe(topic, qos=1), self.ready.set())
        self.c.on_message = lambda c, u, m: self._add(m)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert self.ready.wait(10), "subscriber could not connect"
        time.sleep(0.2)

    def _add(self, m) -> None:
        with self.lock:
            self.messages.append((m.topic, m.payload, bool(m.retain)))

    def on(self, suffix: str) -> list[bytes]:
        with self.lock:
            return [p for t, p, _ in self.messages if t.endswith(suffix)]

    def wait_for(self, suffix: str, n: int, timeout: float = 20.0) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.on(suffix)) < n:
            time.sleep(0.05)
        return self.on(suffix)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def edge(*args: str, stdin=None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge", *args], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, stdin=stdin, **kw)


def run_args(port: int, tmp_path, *extra: str) -> list[str]:
    return ["run", *MODELS, "--mqtt-host", "127.0.0.1", "--mqtt-port", str(port), "--device-id", "test",
            "--device-outbox", str(tmp_path / "outbox.sqlite"), "--device-shutdown-flush-s", "5", *extra]


def test_events_arrive_with_the_documented_schema(broker, tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    from conftest import load_schema

    sub = Subscriber(broker.port)
    result = edge(*run_args(broker.port, tmp_path, "--source", str(DEMO), "--fast"))
    assert result.returncode == 0, result.stderr
    events = [json.loads(p) for p in sub.wait_for("/event", 3)]
    status = sub.wait_for("/status", 2)
    sub.close()
    assert len(events) >= 3
    validator = jsonschema.Draft202012Validator(load_schema("event"), format_checker=jsonschema.FormatChecker())
    for e in events:
        validator.validate(e)
        assert e["device_id"] == "test" and e["detector"]["name"] == "cough-detector"
    assert len({e["event_id"] for e in events}) == len(events)
    assert status[:1] == [b"online"] and status[-1] == b"offline"
    stopped = ast.literal_eval(result.stderr.split("stopped: ", 1)[1].splitlines()[0])
    assert stopped["merged"] >= 1, "the demo's coughs have phases that join their cough"
    assert stopped["sounds"] == stopped["events"] + stopped["rejected"] + stopped["merged"] + stopped["superseded"], \
        "every sound accounted for"
    assert stopped["events"] == len(events)


def test_outbox_replays_after_a_broker_outage(tmp_path):
    from edge.outbox import Outbox

    b = make_broker(tmp_path)  # not started: the broker is away
    result = edge(*run_args(b.port, tmp_path, "--source", str(DEMO), "--fast", "--device-shutdown-flush-s", "0.5"))
    assert result.returncode == 0, result.stderr
    stored = Outbox(tmp_path / "outbox.sqlite").pending(1000)
    assert len(stored) >= 3
    ids = {row[1] for row in stored}
    b.start()
    try:
        sub = Subscriber(b.port)
        silent = tmp_path / "silence.wav"
        sf.write(str(silent), np.zeros(16000, dtype=np.float32), 16000)
        result = edge(*run_args(b.port, tmp_path, "--source", str(silent), "--fast"))
        assert result.returncode == 0, result.stderr
        got = [json.loads(p)["event_id"] for p in sub.wait_for("/event", len(ids))]
        sub.close()
    finally:
        b.stop()
    assert sorted(got) == sorted(ids)
    assert Outbox(tmp_path / "outbox.sqlite").depth() == 0


def test_last_will_and_sigterm(broker, tmp_path):
    sub = Subscriber(broker.port)
    args = [sys.executable, "-m", "edge", *run_args(broker.port, tmp_path, "--source", "-")]
    for sig, clean in ((signal.SIGTERM, True), (signal.SIGKILL, False)):
        before = len(sub.on("/status"))
        proc = subprocess.Popen(args, cwd=ROOT, stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and b"online" not in sub.on("/status")[before:]:
            time.sleep(0.05)
        assert b"online" in sub.on("/status")[before:]
        proc.stdin.write("\0" * 32000)  # a second of silence as s16le
        proc.stdin.flush()
        proc.send_signal(sig)
        rc = proc.wait(timeout=30)
        assert rc == (0 if clean else -signal.SIGKILL), proc.stderr.read()
        statuses = sub.wait_for("/status", before + 2)
        assert statuses[-1] == b"offline", (sig, statuses)
    sub.close()


def test_password_auth_and_a_broker_that_refuses_us(tmp_path):
    pw = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(pw), "pi", "s3cret"], check=True, capture_output=True)
    b = make_broker(tmp_path, f"allow_anonymous false\npassword_file {pw}")
    b.start()
    try:
        base = ["check", "--skip-mic", *MODELS, "--mqtt-host", "127.0.0.1", "--mqtt-port", str(b.port),
                "--mqtt-username", "pi"]
        bad = edge(*base, env={**os.environ, "COUGHWATCH_MQTT_PASSWORD": "wrong"})
        assert bad.returncode == 1 and "refused us" in bad.stdout, bad.stdout
        good = edge(*base, env={**os.environ, "COUGHWATCH_MQTT_PASSWORD": "s3cret"})
        assert good.returncode == 0, good.stdout
        sub = Subscriber(b.port, username="pi", password="s3cret")
        run = edge(*run_args(b.port, tmp_path, "--source", str(DEMO), "--fast", "--mqtt-username", "pi"),
                   env={**os.environ, "COUGHWATCH_MQTT_PASSWORD": "s3cret"})
        assert run.returncode == 0, run.stderr
        assert len(sub.wait_for("/event", 3)) >= 3
        sub.close()
    finally:
        b.stop()


def test_tls(tmp_path):
    def ssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=tmp_path)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=test-ca")
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    (tmp_path / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    ssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out",
        "server.crt", "-days", "2", "-extfile", "ext.cnf")
    tls_port = make_broker(tmp_path).port
    b = make_broker(tmp_path, f"allow_anonymous true\nlistener {tls_port} 127.0.0.1\ncafile {tmp_path}/ca.crt\n"
                              f"certfile {tmp_path}/server.crt\nkeyfile {tmp_path}/server.key")
    b.start()
    try:
        sub = Subscriber(b.port)  # the plain listener, to watch
        tls = ["--mqtt-tls", "--mqtt-ca-file", str(tmp_path / "ca.crt")]
        result = edge(*run_args(tls_port, tmp_path, "--source", str(DEMO), "--fast", *tls))
        assert result.returncode == 0, result.stderr
        assert len(sub.wait_for("/event", 3)) >= 3
        sub.close()
        untrusted = edge("check", "--skip-mic", *MODELS, "--mqtt-host", "127.0.0.1", "--mqtt-port", str(tls_port),
                         "--mqtt-tls")
        assert untrusted.returncode == 1 and "FAIL  broker" in untrusted.stdout
    finally:
        b.stop()


def test_corrupt_and_silent_audio_give_no_events_and_no_crash(tmp_path):
    corrupt = tmp_path / "corrupt.flac"
    corrupt.write_bytes(b"fLaC" + os.urandom(4000))
    result = edge("run", *MODELS, "--source", str(corrupt), "--fast", "--device-id", "t")
    assert result.returncode == 2 and "corrupt.flac" in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""
    silent = tmp_path / "silent.wav"
    sf.write(str(silent), np.zeros(16000 * 3, dtype=np.float32), 8000)  # silence, and at another rate
    result = edge("run", *MODELS, "--source", str(silent), "--fast", "--device-id", "t")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""


def test_a_model_without_contract_metadata_is_refused(tiny_model, tmp_path):
    import onnx

    proto = onnx.load(str(tiny_model))
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, str(bare))
    result = edge("run", "--model-detector", str(bare), "--model-classifier", str(CLASSIFIER), "--source", str(DEMO),
                  "--fast", "--device-id", "t")
    assert result.returncode == 2
    assert "bare.onnx: tiny: metadata_props lacks labels" in result.stderr and "trainer export" in result.stderr


def test_bad_flag_value_names_the_key(tmp_path):
    result = edge("run", *MODELS, "--mqtt-port", "seventy", "--source", str(DEMO))
    assert result.returncode == 2 and "mqtt.port = 'seventy'" in result.stderr
