"""Home Assistant MQTT discovery: one device with the rolling counts, the last cough, a cough event entity and
diagnostic entities for audio, broker and outbox; and the empty retained configs that remove them again.

Entities (``<discovery_prefix>/<component>/coughwatch_<device>_<key>/config``, retained): their entity ids are
``<component>.coughwatch_<device>_<key>``. Every entity is available while the device's status topic says
``online``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

RETIRED = (("sensor", "cough_count"), ("sensor", "last_cough"))
"""Entities that earlier versions published: their configs are emptied, so Home Assistant removes them."""
PUBLISHED_FLAG = "discovery_published"
"""Outbox flag: discovery configs are on the broker (removed when discovery is turned off)."""


@dataclass(frozen=True)
class DeviceInfo:
    sw_version: str
    """coughwatch's version."""
    detector: str
    """The cough detector's model name."""
    classifier: str
    """The classifier's model name."""


def software_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("coughwatch")
    except PackageNotFoundError:
        return "unknown"


def _entities(topics: dict[str, str]) -> dict[tuple[str, str], dict]:
    counts, stats = topics["counts"], topics["stats"]
    diagnostic = {"entity_category": "diagnostic", "state_topic": stats}
    return {
        ("sensor", "coughs_last_hour"): {
            "name": "Coughs in the last hour", "state_topic": counts, "value_template": "{{ value_json.last_hour }}",
            "unit_of_measurement": "coughs/h", "state_class": "measurement", "icon": "mdi:lungs"},
        ("sensor", "coughs_last_24h"): {
            "name": "Coughs in the last 24 hours", "state_topic": counts, "value_template": "{{ value_json.last_24h }}",
            "unit_of_measurement": "coughs", "state_class": "measurement", "icon": "mdi:lungs",
            "json_attributes_topic": counts,
            "json_attributes_template": "{{ {'hourly': value_json.hourly, 'by_label': value_json.by_label_24h, "
                                        "'clock_synced': value_json.clock_synced} | to_json }}"},
        ("sensor", "coughs_today"): {
            "name": "Coughs today", "state_topic": counts, "value_template": "{{ value_json.today }}",
            "unit_of_measurement": "coughs", "state_class": "total_increasing", "icon": "mdi:lungs"},
        ("sensor", "last_cough_time"): {
            "name": "Last cough", "state_topic": topics["last_cough"], "device_class": "timestamp"},
        ("event", "cough"): {
            "name": "Cough", "state_topic": topics["event"], "event_types": ["cough"], "icon": "mdi:lungs",
            "value_template": "{{ {'event_type': 'cough', 'label': value_json.label, 'onset_utc': "
                              "value_json.onset_utc, 'cough_score': value_json.cough_score, 'event_uuid': "
                              "value_json.event_id} | to_json }}"},
        ("sensor", "health"): {
            **diagnostic, "name": "Audio health", "value_template": "{{ value_json.audio }}",
            "json_attributes_topic": stats, "icon": "mdi:microphone"},
        ("sensor", "broker"): {
            **diagnostic, "name": "Broker", "value_template": "{{ value_json.mqtt }}", "icon": "mdi:server-network",
            "json_attributes_topic": stats,
            "json_attributes_template": "{{ {'error': value_json.mqtt_error, 'refused': value_json.publish_rejected, "
                                        "'last_refusal': value_json.last_rejection} | to_json }}"},
        ("sensor", "outbox_depth"): {
            **diagnostic, "name": "Outbox waiting", "value_template": "{{ value_json.outbox_depth }}",
            "unit_of_measurement": "events", "state_class": "measurement", "icon": "mdi:tray-full"},
        ("sensor", "outbox_dropped"): {
            **diagnostic, "name": "Outbox dropped", "value_template": "{{ value_json.outbox_dropped }}",
            "unit_of_measurement": "events", "state_class": "total_increasing", "icon": "mdi:tray-remove"},
    }


def _config_topic(prefix: str, component: str, uid: str) -> str:
    return f"{prefix}/{component}/{uid}/config"


def discovery_messages(prefix: str, device_id: str, topics: dict[str, str],
                       info: DeviceInfo) -> list[tuple[str, str]]:
    """``(topic, payload)`` of every config to publish (retained), retired entities' empty ones first."""
    device = {"identifiers": [f"coughwatch_{device_id}"], "name": f"coughwatch {device_id}",
              "manufacturer": "coughwatch", "model": f"edge daemon ({info.detector}, {info.classifier})",
              "sw_version": info.sw_version}
    shared = {"device": device, "origin": {"name": "coughwatch", "sw_version": info.sw_version}}
    availability = {"availability_topic": topics["status"], "payload_available": "online",
                    "payload_not_available": "offline"}
    out = [(_config_topic(prefix, c, f"coughwatch_{device_id}_{key}"), "") for c, key in RETIRED]
    for (component, key), cfg in _entities(topics).items():
        uid = f"coughwatch_{device_id}_{key}"
        out.append((_config_topic(prefix, component, uid),
                    json.dumps({**cfg, **availability, **shared, "unique_id": uid, "object_id": uid},
                               sort_keys=True)))
    return out


def removal_messages(prefix: str, device_id: str, topics: dict[str, str]) -> list[tuple[str, str]]:
    """An empty retained config for every entity, current and retired: Home Assistant removes them."""
    keys = list(_entities(topics)) + list(RETIRED)
    return [(_config_topic(prefix, c, f"coughwatch_{device_id}_{key}"), "") for c, key in keys]


def entity_ids(device_id: str, topics: dict[str, str]) -> list[str]:
    """The entity ids Home Assistant gives the discovered entities."""
    return [f"{c}.coughwatch_{device_id}_{key}".lower().replace("-", "_") for c, key in _entities(topics)]
