"""Delivery faults against a real mosquitto: a broker that refuses (ACL), cannot be reached, or takes our session."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import paho.mqtt.client as mqtt

from conftest import DEMO, ROOT, make_broker
from test_edge_io import MODELS, Subscriber, edge, run_args

DENY_EVENTS = """topic readwrite coughwatch/test/status
topic readwrite coughwatch/test/stats
topic read coughwatch/test/event
topic read coughwatch/test/check
"""


def acl_broker(tmp_path, acl: str):
    (tmp_path / "acl").write_text(acl)
    return make_broker(tmp_path, f"allow_anonymous true\nacl_file {tmp_path / 'acl'}")


def logged_ids(stderr: str) -> set[str]:
    return {line.split("event id=")[1].split()[0] for line in stderr.splitlines() if "event id=" in line}


def test_events_the_broker_refuses_stay_in_the_outbox_and_are_reported(tmp_path):
    from edge.outbox import Outbox

    b = acl_broker(tmp_path, DENY_EVENTS)
    b.start()
    try:
        sub = Subscriber(b.port)
        run = edge(*run_args(b.port, tmp_path, "--source", str(DEMO), "--fast", "--device-shutdown-flush-s", "1"))
        assert run.returncode == 0, run.stderr
        ids = logged_ids(run.stderr)
        stats = [json.loads(p) for p in sub.wait_for("/stats", 1)]
        assert sub.on("/event") == []
        sub.close()
    finally:
        b.stop()
    assert len(ids) >= 3
    assert "broker refused event" in run.stderr and "coughwatch/test/event: Not authorized" in run.stderr
    assert stats and stats[-1]["publish_rejected"] >= 1  # counted while the run went on
    assert stats[-1]["last_rejection"] == "coughwatch/test/event: Not authorized"
    box = Outbox(tmp_path / "outbox.sqlite")
    assert {row[1] for row in box.pending(1000)} == ids  # nothing deleted on a refusal
    box.close()

    # Once the ACL grants the topic, the kept events are delivered: nothing was lost.
    (tmp_path / "acl").write_text("topic readwrite coughwatch/#\n")
    b.start()
    try:
        sub = Subscriber(b.port)
        again = edge(*run_args(b.port, tmp_path, "--source", "-"), input="")
        assert again.returncode == 0, again.stderr
        got = {json.loads(p)["event_id"] for p in sub.wait_for("/event", len(ids))}
        sub.close()
    finally:
        b.stop()
    assert got == ids


def test_check_fails_when_the_broker_does_not_deliver_the_devices_topics(tmp_path):
    b = acl_broker(tmp_path, DENY_EVENTS)
    b.start()
    try:
        args = ["check", "--skip-mic", *MODELS, "--mqtt-host", "127.0.0.1", "--mqtt-port", str(b.port),
                "--device-id", "test"]
        denied = edge(*args)
        (tmp_path / "acl").write_text("topic readwrite coughwatch/test/#\n")
        b.stop()
        b.start()
        allowed = edge(*args)
    finally:
        b.stop()
    assert denied.returncode == 1, denied.stdout
    assert "FAIL  broker" in denied.stdout and "refused the probe on coughwatch/test/check: Not authorized" \
        in denied.stdout
    assert allowed.returncode == 0, allowed.stdout
    assert "delivered back" in allowed.stdout


def test_an_unreachable_broker_is_logged_once_with_its_cause_and_shown_in_stats(tmp_path):
    b = make_broker(tmp_path)  # never started: connection refused
    run = edge(*run_args(b.port, tmp_path, "--source", str(DEMO), "--fast", "--device-shutdown-flush-s", "3"))
    assert run.returncode == 0, run.stderr
    failures = [line for line in run.stderr.splitlines() if "cannot connect to broker" in line]
    assert len(failures) == 1, failures  # the first failure, not one line per retry
    assert f"127.0.0.1:{b.port}: connection refused" in failures[0]
    assert "'mqtt': 'disconnected'" in run.stderr and "'mqtt_error': 'connection refused" in run.stderr


def test_tls_to_a_plain_port_and_a_host_with_a_port_are_named(tmp_path):
    b = make_broker(tmp_path)
    b.start()
    try:
        tls = edge(*run_args(b.port, tmp_path, "--source", str(DEMO), "--fast", "--mqtt-tls",
                             "--device-shutdown-flush-s", "2"))
    finally:
        b.stop()
    assert tls.returncode == 0, tls.stderr
    assert "during the TLS handshake (is the port a TLS listener?)" in tls.stderr
    colon = edge("run", *MODELS, "--mqtt-host", f"127.0.0.1:{b.port}", "--source", str(DEMO), "--device-id", "t")
    assert colon.returncode == 2 and "without a port" in colon.stderr and "Traceback" not in colon.stderr


def test_a_second_client_with_our_id_is_named_session_taken_over(broker, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "edge", *run_args(broker.port, tmp_path, "--source", "-")],
                            cwd=ROOT, stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    sub = Subscriber(broker.port)
    assert b"online" in sub.wait_for("/status", 1)
    sub.close()
    thief = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id="coughwatch-test",
                        protocol=mqtt.MQTTv5)
    thief.connect("127.0.0.1", broker.port)
    thief.loop_start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not any("session taken over" in line for line in list(lines)):
        time.sleep(0.05)
    thief.disconnect()
    thief.loop_stop()
    proc.stdin.close()
    assert proc.wait(timeout=60) == 0
    reader.join(timeout=10)
    taken = [line for line in lines if "session taken over" in line]
    assert taken, "".join(lines)
    # mosquitto before 2.0.15 closes the connection without MQTT v5's reason 0x8E: the pattern names the cause.
    assert "another client connected with our client id coughwatch-test" in taken[0]
    assert sum("retrying with back-off" in line for line in lines) < 5  # not one line per reconnect


def test_an_exception_in_a_callback_does_not_stop_delivery(broker):
    from edge.mqtt import guarded

    got: list[bytes] = []
    subscribed = threading.Event()

    def on_message(client, userdata, msg):
        if msg.payload == b"poison":
            raise ValueError("a callback bug")
        got.append(msg.payload)

    c = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id="victim", protocol=mqtt.MQTTv5)
    c.on_message = guarded(on_message)
    c.on_subscribe = lambda *a: subscribed.set()
    c.on_connect = lambda client, *a: client.subscribe("t", qos=1)
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    assert subscribed.wait(10)
    pub = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id="pub", protocol=mqtt.MQTTv5)
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    for payload in (b"poison", b"after"):
        pub.publish("t", payload, qos=1).wait_for_publish(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not got:
        time.sleep(0.05)
    for client in (pub, c):
        client.disconnect()
        client.loop_stop()
    assert got == [b"after"]
