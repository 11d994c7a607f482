"""Rolling counts against the real thing: the daemon's processes, a real mosquitto, real SQLite files. The
retained counts must equal the events the daemon produced across a restart, a broker outage and a kill -9."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from datetime import datetime

import numpy as np
import pytest
import soundfile as sf

from conftest import DEMO, ROOT, make_broker
from test_edge_io import Subscriber, edge, run_args
from test_reliability_mqtt import logged_ids


def retained_counts(port: int) -> dict:
    """The counts a subscriber arriving now is given (the retained message)."""
    sub = Subscriber(port)
    try:
        got = sub.wait_for("/counts", 1, timeout=10)
    finally:
        sub.close()
    assert got, "no retained counts"
    return json.loads(got[-1])


def silence(tmp_path) -> str:
    path = tmp_path / "silence.wav"
    sf.write(str(path), np.zeros(16000, dtype=np.float32), 16000)
    return str(path)


def run_until_online(port: int, tmp_path, *extra: str) -> str:
    """Run the daemon on stdin until the broker has seen it online, then end its input (a clean exit); returns its
    log. A run on a short file could end before it ever connected (it waits only for events to deliver)."""
    sub = Subscriber(port, topic="coughwatch/test/status")
    before = len(sub.on("/status"))  # the retained status, if any
    log = tmp_path / "online.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "edge", *run_args(port, tmp_path, "--source", "-", *extra)],
                                cwd=ROOT, stdin=subprocess.PIPE, stderr=err)
        try:
            assert b"online" in sub.wait_for("/status", before + 1, timeout=30)[before:], log.read_text()
        finally:
            proc.stdin.close()
            code = proc.wait(timeout=30)
            sub.close()
    assert code == 0, log.read_text()
    return log.read_text()


def test_counts_are_retained_valid_and_survive_a_restart(broker, tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    from conftest import load_schema

    first = edge(*run_args(broker.port, tmp_path, "--source", str(DEMO), "--fast"))
    assert first.returncode == 0, first.stderr
    n = len(logged_ids(first.stderr))
    counts = retained_counts(broker.port)
    jsonschema.Draft202012Validator(load_schema("counts"), format_checker=jsonschema.FormatChecker()).validate(counts)
    assert n >= 3 and counts["last_hour"] == counts["last_24h"] == counts["kept"] == n
    assert sum(counts["by_label_24h"].values()) == n and sum(h["coughs"] for h in counts["hourly"]) == n
    second = edge(*run_args(broker.port, tmp_path, "--source", str(DEMO), "--fast"))  # the service restarted
    assert second.returncode == 0, second.stderr
    assert len(logged_ids(second.stderr)) == n
    assert retained_counts(broker.port)["last_hour"] == 2 * n
    listen = edge("listen", "--mqtt-host", "127.0.0.1", "--mqtt-port", str(broker.port), "--counts", "--timeout", "3")
    printed = [json.loads(line) for line in listen.stdout.splitlines()]
    assert printed and printed[0]["topic"] == "coughwatch/test/counts" and printed[0]["counts"]["last_hour"] == 2 * n


def test_counts_survive_a_broker_outage(tmp_path):
    b = make_broker(tmp_path)  # not started: the broker is away while the coughs come
    away = edge(*run_args(b.port, tmp_path, "--source", str(DEMO), "--fast", "--device-shutdown-flush-s", "0.5"))
    assert away.returncode == 0, away.stderr
    ids = logged_ids(away.stderr)
    b.start()
    try:
        sub = Subscriber(b.port)
        back = edge(*run_args(b.port, tmp_path, "--source", silence(tmp_path), "--fast"))
        assert back.returncode == 0, back.stderr
        events = [json.loads(p) for p in sub.wait_for("/event", len(ids))]
        sub.close()
        counts = retained_counts(b.port)
    finally:
        b.stop()
    assert len(ids) >= 3 and {e["event_id"] for e in events} == ids
    midnight = datetime.fromisoformat(counts["today_since"])  # a run across midnight counts its coughs on two days
    since_midnight = sum(datetime.fromisoformat(e["onset_utc"].replace("Z", "+00:00")) >= midnight for e in events)
    assert counts["last_hour"] == len(ids) and counts["today"] == since_midnight


def test_counts_survive_kill_9_and_equal_the_events_delivered(broker, tmp_path):
    audio, rate = sf.read(str(DEMO), dtype="int16")
    assert rate == 16000
    log = tmp_path / "run.log"
    sub = Subscriber(broker.port)
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "edge", *run_args(broker.port, tmp_path, "--source", "-")],
                                cwd=ROOT, stdin=subprocess.PIPE, stderr=err)
        proc.stdin.write(audio.tobytes() + b"\0" * 32000 * 4)  # the demo and 4 s of silence: every cough completes
        proc.stdin.flush()
        deadline = time.monotonic() + 60
        seen = -1
        while time.monotonic() < deadline:  # until no new event for a second
            time.sleep(1.0)
            now = len(logged_ids(log.read_text()))
            if now == seen and now:
                break
            seen = now
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    ids = logged_ids(log.read_text())
    again = edge(*run_args(broker.port, tmp_path, "--source", silence(tmp_path), "--fast"))
    assert again.returncode == 0, again.stderr
    delivered = {json.loads(p)["event_id"] for p in sub.wait_for("/event", len(ids))}
    sub.close()
    assert len(ids) >= 3 and ids <= delivered  # each id was logged after it was stored: delivered before or after
    assert retained_counts(broker.port)["last_hour"] == len(ids)


def test_discovery_turned_off_removes_the_entities_it_published(broker, tmp_path):
    sub = Subscriber(broker.port, topic="homeassistant/#")
    run_until_online(broker.port, tmp_path)
    assert sub.on("/config") == []  # a device that never published discovery sends no removals
    run_until_online(broker.port, tmp_path, "--mqtt-discovery")
    time.sleep(0.5)
    with sub.lock:
        configs = {t: p for t, p, _ in sub.messages if p}
    assert len(configs) >= 9
    for topic, payload in configs.items():
        config = json.loads(payload)
        assert config["device"]["sw_version"] and "cough-detector" in config["device"]["model"], topic
        assert config["unique_id"] in topic and config["availability_topic"] == "coughwatch/test/status"
    kinds = {t.split("/")[1] for t in configs}
    assert kinds == {"sensor", "event"}
    run_until_online(broker.port, tmp_path, "--no-mqtt-discovery")
    time.sleep(0.5)
    with sub.lock:
        emptied = {t for t, p, _ in sub.messages if not p}
    assert set(configs) <= emptied
    later = Subscriber(broker.port, topic="homeassistant/#")  # nothing retained is left for Home Assistant
    time.sleep(0.5)
    assert [p for p in later.on("/config") if p] == []
    later.close()
    sub.close()
