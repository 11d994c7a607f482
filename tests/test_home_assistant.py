"""The daemon's discovery and counts in a real Home Assistant (installed from PyPI into its own virtual
environment, see real_home_assistant.py), over a real mosquitto, with the daemon hearing the demo recording."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest
import soundfile as sf

from conftest import DEMO, ROOT
from real_home_assistant import HA_VERSION, HomeAssistant, ensure_installed, venv_dir, write_config
from test_edge_io import Subscriber, run_args
from test_reliability_counts import run_until_online
from test_reliability_mqtt import logged_ids

pytestmark = pytest.mark.slow
DIAGNOSTIC = {"health", "broker", "outbox_depth", "outbox_dropped"}
STREAM = "hastream"


def wait_for(what: str, condition, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture
def home_assistant(broker, tmp_path):
    from mosquitto import free_port

    port = free_port()
    token = write_config(tmp_path / "ha", http_port=port, mqtt_port=broker.port, statestream=STREAM)
    ha = HomeAssistant(ensure_installed(venv_dir()), tmp_path / "ha", port, token)
    ha.start()
    yield ha
    ha.stop()


def speak(proc: subprocess.Popen, seconds_of_silence: float) -> None:
    """The demo recording in real time as s16le on the daemon's stdin (coughs come as they would in a room)."""
    audio, rate = sf.read(str(DEMO), dtype="int16")
    data = audio.tobytes() + b"\0" * int(2 * rate * seconds_of_silence)
    block = rate // 10 * 2
    start = time.monotonic()
    for i in range(0, len(data), block):
        proc.stdin.write(data[i:i + block])
        proc.stdin.flush()
        time.sleep(max(0.0, start + (i + block) / (2 * rate) - time.monotonic()))


def entity_ids(device: str = "test") -> list[str]:
    from edge.discovery import entity_ids as ids

    return ids(device, {k: "" for k in ("event", "status", "stats", "counts", "last_cough")})


def test_home_assistant_shows_the_device_the_counts_and_each_cough(broker, home_assistant, tmp_path):
    ha = home_assistant
    fires = Subscriber(broker.port, topic=f"{STREAM}/event/#")
    log = tmp_path / "run.log"
    args = run_args(broker.port, tmp_path, "--source", "-", "--mqtt-discovery", "--mqtt-stats-interval-s", "1")
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "edge", *args], cwd=ROOT, stdin=subprocess.PIPE, stderr=err)
        try:
            wait_for("every entity in Home Assistant", lambda: all(ha.state(e) for e in entity_ids()))
            speak(proc, seconds_of_silence=4)
            n = len(logged_ids(log.read_text()))
            states = wait_for(f"Home Assistant to count {n} coughs", lambda: counted(ha, n))
            fired = wait_for(f"{n} cough events", lambda: event_fires(fires) if len(event_fires(fires)) >= n else None,
                             timeout=10)
            device = device_facts(ha)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0, log.read_text()[-3000:]
    assert n >= 3
    check_states(states, n)
    assert len(fired) == n, "the event entity fires once per cough"
    assert device["sw_version"] and device["model"].startswith("edge daemon (cough-detector, covid-screen")
    assert sorted(device["entities"]) == sorted(entity_ids())
    unavailable = wait_for("entities unavailable once the daemon is offline",
                           lambda: ha.state("sensor.coughwatch_test_coughs_today")["state"] == "unavailable")
    assert unavailable
    ha.stop()
    check_registries(ha)


def counted(ha: HomeAssistant, n: int) -> dict | None:
    states = {e: ha.state(e) for e in entity_ids()}
    keys = ("coughs_last_hour", "coughs_last_24h", "coughs_today")
    if all(states[f"sensor.coughwatch_test_{k}"]["state"] == str(n) for k in keys):
        return states
    return None


def event_fires(sub: Subscriber) -> list[bytes]:
    """Each state the cough event entity took (its state is the time it last fired), as mqtt_statestream saw it."""
    return [p for p in sub.on("/state") if p not in (b"unknown", b"unavailable", b"")]


def check_states(states: dict, n: int) -> None:
    last_hour, last_24h, today = (states[f"sensor.coughwatch_test_{k}"] for k in
                                  ("coughs_last_hour", "coughs_last_24h", "coughs_today"))
    assert last_hour["attributes"]["unit_of_measurement"] == "coughs/h"
    assert last_hour["attributes"]["state_class"] == last_24h["attributes"]["state_class"] == "measurement"
    assert today["attributes"]["state_class"] == "total_increasing"
    assert sum(h["coughs"] for h in last_24h["attributes"]["hourly"]) == n
    assert sum(last_24h["attributes"]["by_label"].values()) == n
    last = states["sensor.coughwatch_test_last_cough_time"]
    assert last["attributes"]["device_class"] == "timestamp"
    assert abs(datetime.fromisoformat(last["state"]) - datetime.now(timezone.utc)) < timedelta(minutes=5)
    cough = states["event.coughwatch_test_cough"]
    assert cough["attributes"]["event_types"] == ["cough"] and cough["attributes"]["event_type"] == "cough"
    assert cough["attributes"]["label"] in ("positive", "negative") and cough["attributes"]["event_uuid"]
    assert states["sensor.coughwatch_test_broker"]["state"] == "connected"
    assert states["sensor.coughwatch_test_outbox_depth"]["state"] == "0"
    assert states["sensor.coughwatch_test_outbox_dropped"]["state"] == "0"
    assert states["sensor.coughwatch_test_health"]["state"] in ("ok", "silent")


def device_facts(ha: HomeAssistant) -> dict:
    """The device Home Assistant made of the discovery configs, through its template API."""
    template = ("{% set d = device_id('sensor.coughwatch_test_coughs_today') %}"
                "{{ {'sw_version': device_attr(d, 'sw_version'), 'model': device_attr(d, 'model'), "
                "'entities': device_entities(d)} | to_json }}")
    return json.loads(ha.template(template))


def check_registries(ha: HomeAssistant) -> None:
    """What Home Assistant saved on the way out: one device, its entities, the diagnostic ones marked so."""
    devices = [d for d in ha.registry("core.device_registry")["devices"]
               if ["mqtt", "coughwatch_test"] in d["identifiers"]]
    assert len(devices) == 1 and devices[0]["manufacturer"] == "coughwatch"
    entities = {e["entity_id"]: e for e in ha.registry("core.entity_registry")["entities"]
                if e["device_id"] == devices[0]["id"]}
    assert sorted(entities) == sorted(entity_ids())
    for entity_id, entity in entities.items():
        key = entity_id.split("coughwatch_test_", 1)[1]
        assert entity["platform"] == "mqtt"
        assert entity["entity_category"] == ("diagnostic" if key in DIAGNOSTIC else None), entity_id


def test_turning_discovery_off_removes_the_device_from_home_assistant(broker, home_assistant, tmp_path):
    ha = home_assistant
    run_until_online(broker.port, tmp_path, "--mqtt-discovery")
    wait_for("every entity in Home Assistant", lambda: all(ha.state(e) for e in entity_ids()))
    run_until_online(broker.port, tmp_path, "--no-mqtt-discovery")
    wait_for("every entity gone", lambda: not any(ha.state(e) for e in entity_ids()))
    ha.stop()
    assert not [d for d in ha.registry("core.device_registry")["devices"]
                if ["mqtt", "coughwatch_test"] in d["identifiers"]]


def test_the_home_assistant_version_is_the_one_readme_names():
    assert f"Home Assistant {HA_VERSION}" in (ROOT / "README.md").read_text()
