"""Home Assistant MQTT discovery: a device with sensors for the last event, cough count and health."""
from __future__ import annotations

import json


def discovery_messages(prefix: str, device_id: str, topics: dict[str, str]) -> list[tuple[str, str]]:
    device = {"identifiers": [f"coughwatch_{device_id}"], "name": f"coughwatch {device_id}",
              "manufacturer": "coughwatch", "model": "edge daemon"}
    avail = {"availability_topic": topics["status"], "payload_available": "online", "payload_not_available": "offline"}
    sensors = {
        "last_cough": {"name": "Last cough label", "state_topic": topics["event"], "value_template": "{{ value_json.label }}",
                       "json_attributes_topic": topics["event"]},
        "cough_count": {"name": "Coughs since start", "state_topic": topics["stats"],
                        "value_template": "{{ value_json.events }}", "state_class": "total_increasing"},
        "health": {"name": "Audio health", "state_topic": topics["stats"], "value_template": "{{ value_json.audio }}",
                   "json_attributes_topic": topics["stats"]},
    }
    out = []
    for key, cfg in sensors.items():
        uid = f"coughwatch_{device_id}_{key}"
        out.append((f"{prefix}/sensor/{uid}/config", json.dumps({**cfg, **avail, "unique_id": uid, "device": device})))
    return out
