"""Bad input gives a clear error, never a traceback or a silent fault: settings, secrets, files, listen messages."""
from __future__ import annotations

import json
import os
import threading

import paho.mqtt.client as mqtt

from conftest import DEMO
from test_edge_io import MODELS, edge

RUN = ["run", *MODELS, "--source", str(DEMO), "--fast", "--device-id", "t"]


def refused(*args: str, env: dict | None = None) -> str:
    result = edge(*args, env={**os.environ, **(env or {})})
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr


def test_settings_that_would_stop_delivery_are_refused_at_start():
    cases = {
        ("--mqtt-keepalive-s", "70000"): "keepalive_s = 70000 must be in 5..65535",
        ("--mqtt-discovery-prefix", "ha/#"): "discovery_prefix = 'ha/#' must be non-empty, without '+', '#'",
        ("--mqtt-topic-prefix", "$SYS"): "not start with '$'",
        ("--device-id", "x" * 70000): "must be 1..64 ASCII letters",
        ("--device-id", "küche"): "must be 1..64 ASCII letters",
        ("--mqtt-stats-interval-s", "nan"): "mqtt.stats_interval_s = 'nan' (from --mqtt-stats-interval-s): must be a "
                                            "finite number",
        ("--device-silence-s", "inf"): "must be a finite number",
        ("--mqtt-port", "1883.5"): "mqtt.port = '1883.5' (from --mqtt-port): not a whole number",
        ("--mqtt-host", "10.0.0.2:1883"): "must be a host name or address without a port",
    }
    for flag, message in cases.items():
        assert message in refused(*RUN, *flag), flag


def test_a_float_for_an_integer_key_in_the_file_is_refused_not_truncated(tmp_path):
    conf = tmp_path / "edge.toml"
    conf.write_text("[mqtt]\nport = 1883.7\n")
    assert "mqtt.port = 1883.7 (from config file): must be a whole number" in refused(*RUN, "--config", str(conf))


def test_the_password_has_no_flag_and_is_never_echoed(tmp_path):
    flag = edge(*RUN, "--mqtt-password", "hunter2")
    assert flag.returncode == 2 and "unrecognized arguments: --mqtt-password" in flag.stderr
    conf = tmp_path / "edge.toml"
    conf.write_text('[mqtt]\npassword = ["hunter2"]\n')  # a wrong type: the error must not show the value
    err = refused(*RUN, "--config", str(conf))
    assert "mqtt.password = <hidden>" in err and "hunter2" not in err


def test_config_files_that_cannot_be_read_give_a_clear_error(tmp_path):
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes('[device]\nid = "k\xfcche"\n'.encode("latin-1"))
    assert f"config file {latin1} is not UTF-8 text" in refused(*RUN, "--config", str(latin1))
    assert f"config file {tmp_path} is not a regular file" in refused(*RUN, "--config", str(tmp_path))
    missing = tmp_path / "missing.toml"
    assert f"config file {missing} does not exist" in refused(*RUN, "--config", str(missing))


def test_a_misspelt_environment_variable_is_named():
    result = edge(*RUN, env={**os.environ, "COUGHWATCH_MQTT_PASWORD": "x"})
    assert result.returncode == 0, result.stderr
    assert "environment variable COUGHWATCH_MQTT_PASWORD is not a setting and is ignored; did you mean " \
           "COUGHWATCH_MQTT_PASSWORD?" in result.stderr


def test_stdin_rate_zero_and_bad_ca_files_are_clear_errors(tmp_path):
    err = refused("run", *MODELS, "--source", "-", "--stdin-rate", "0", "--device-id", "t")
    assert "argument --stdin-rate: 0 Hz is outside 1000..384000 Hz" in err
    not_pem = tmp_path / "ca.crt"
    not_pem.write_text("this is not a certificate\n")
    tls = ["--mqtt-host", "127.0.0.1", "--mqtt-tls", "--device-outbox", str(tmp_path / "o.sqlite")]
    assert f"mqtt.ca_file = '{not_pem}' is not a PEM CA certificate" in \
        refused(*RUN, *tls, "--mqtt-ca-file", str(not_pem))
    missing = tmp_path / "nope.crt"
    assert f"mqtt.ca_file = '{missing}': no such file" in refused(*RUN, *tls, "--mqtt-ca-file", str(missing))


def test_listen_skips_malformed_messages_and_keeps_listening(broker):
    # A persistent session, registered first, so the broker queues the messages in order for `edge listen`.
    session = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id="coughwatch-listen-s",
                          protocol=mqtt.MQTTv5)
    from edge.mqtt import connect_properties

    subscribed = threading.Event()
    session.on_subscribe = lambda *a: subscribed.set()
    session.connect("127.0.0.1", broker.port, clean_start=True, properties=connect_properties(0xFFFFFFFF))
    session.loop_start()
    session.subscribe("coughwatch/+/event", qos=1)
    assert subscribed.wait(10)
    session.disconnect()
    session.loop_stop()
    pub = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id="pub", protocol=mqtt.MQTTv5)
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    good = json.dumps({"event_id": "good-1", "label": "negative"})
    for payload in (b"\xff\xfe not utf-8", b"{not json", b'{"event_id": 7}', b"[1, 2]", good.encode()):
        pub.publish("coughwatch/x/event", payload, qos=1).wait_for_publish(10)
    pub.disconnect()
    pub.loop_stop()
    result = edge("listen", "--mqtt-host", "127.0.0.1", "--mqtt-port", str(broker.port), "--session", "s",
                  "--count", "1", "--timeout", "60")
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["event_id"] for line in result.stdout.splitlines()] == ["good-1"]
    skipped = [line for line in result.stderr.splitlines() if "skipped a malformed message" in line]
    assert len(skipped) == 4, result.stderr
    assert "not UTF-8" in skipped[0] and "not JSON" in skipped[1] and "event_id is 7" in skipped[2] \
        and "not a JSON object but list" in skipped[3]
