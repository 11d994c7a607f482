"""Result sinks: MQTT (paho-mqtt v2, via the durable outbox) or JSON lines on stdout.

The pipeline calls ``submit`` and never waits for the network: MQTT publishing runs in its own
thread, which drains the outbox whenever the client is connected and deletes an event only when the
broker's PUBACK arrives. After a reconnect every unacknowledged event is sent again (QoS 1 is
at-least-once; subscribers de-duplicate by ``event_id``, as ``edge listen`` does).
"""
from __future__ import annotations

import json
import logging
import ssl
import sys
import threading
import time
from dataclasses import dataclass
from typing import Protocol, TextIO

from .events import CoughEvent
from .outbox import Outbox

log = logging.getLogger(__name__)
MAX_INFLIGHT = 20
"""QoS 1 messages awaiting PUBACK at once (paho's window and the outbox sender's batch)."""


@dataclass(frozen=True)
class MqttSettings:
    host: str = ""
    """Broker host name or address; empty = print events as JSON lines on stdout instead."""
    port: int = 1883
    """Broker TCP port (8883 is usual for TLS)."""
    username: str = ""
    """User name for password authentication (empty = none)."""
    password: str = ""
    """Password; prefer the environment variable COUGHWATCH_MQTT_PASSWORD over the config file."""
    tls: bool = False
    """Connect with TLS."""
    ca_file: str = ""
    """CA bundle (PEM) to verify the broker with; empty = the system's."""
    topic_prefix: str = "coughwatch"
    """Topics are <topic_prefix>/<device_id>/{event,status,stats}."""
    keepalive_s: int = 30
    """MQTT keep-alive interval in seconds."""
    reconnect_max_s: int = 60
    """Upper bound of the exponential reconnect back-off, in seconds."""
    stats_interval_s: float = 30.0
    """Seconds between retained stats heartbeats."""
    discovery: bool = False
    """Publish Home Assistant MQTT discovery configs."""
    discovery_prefix: str = "homeassistant"
    """Home Assistant's discovery topic prefix."""

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"port = {self.port} must be in 1..65535")
        if self.keepalive_s < 5:
            raise ValueError(f"keepalive_s = {self.keepalive_s} must be >= 5 seconds")
        if self.reconnect_max_s < 1:
            raise ValueError(f"reconnect_max_s = {self.reconnect_max_s} must be >= 1 second")
        if self.stats_interval_s <= 0:
            raise ValueError(f"stats_interval_s = {self.stats_interval_s} must be > 0 seconds")
        if not self.topic_prefix or "+" in self.topic_prefix or "#" in self.topic_prefix:
            raise ValueError(f"topic_prefix = {self.topic_prefix!r} must be non-empty without wildcards")


class Sink(Protocol):
    def submit(self, event: CoughEvent) -> None: ...
    def publish_stats(self, stats: dict) -> None: ...
    def depth(self) -> int: ...
    def dropped(self) -> int: ...
    def close(self, timeout: float) -> None: ...


class StdoutSink:
    """No broker configured: one JSON line per event on stdout (logs go to stderr)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout

    def submit(self, event: CoughEvent) -> None:
        self.stream.write(event.to_json() + "\n")
        self.stream.flush()

    def publish_stats(self, stats: dict) -> None:
        log.info("stats %s", json.dumps(stats, sort_keys=True))

    def depth(self) -> int:
        return 0

    def dropped(self) -> int:
        return 0

    def close(self, timeout: float) -> None:
        self.stream.flush()


def make_client(s: MqttSettings, client_id: str, *, will_topic: str | None = None, clean_session: bool = True):
    """A paho v2 client with TLS, credentials, last will and back-off configured (not yet connected)."""
    import paho.mqtt.client as mqtt

    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=mqtt.MQTTv311, clean_session=clean_session)
    if s.username:
        client.username_pw_set(s.username, s.password or None)
    if s.tls:
        client.tls_set(ca_certs=s.ca_file or None, cert_reqs=ssl.CERT_REQUIRED)
    if will_topic:
        client.will_set(will_topic, "offline", qos=1, retain=True)
    client.reconnect_delay_set(min_delay=1, max_delay=s.reconnect_max_s)
    client.max_inflight_messages_set(MAX_INFLIGHT)
    return client


class MqttSink:
    def __init__(self, s: MqttSettings, device_id: str, outbox: Outbox) -> None:
        self.s, self.device_id, self.outbox = s, device_id, outbox
        base = f"{s.topic_prefix}/{device_id}"
        self.topics = {"event": f"{base}/event", "status": f"{base}/status", "stats": f"{base}/stats"}
        self.client = make_client(s, f"coughwatch-{device_id}", will_topic=self.topics["status"])
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self._lock = threading.Lock()
        self._inflight: dict[int, str] = {}
        self._early_acks: set[int] = set()
        self._sent_up_to = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.connected = threading.Event()
        self.client.connect_async(s.host, s.port, keepalive=s.keepalive_s)
        self.client.loop_start()
        self._thread = threading.Thread(target=self._drain_loop, name="mqtt-outbox", daemon=True)
        self._thread.start()

    # paho callbacks (network thread)
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("broker %s:%d refused the connection: %s", self.s.host, self.s.port, reason_code)
            return
        log.info("connected to %s:%d", self.s.host, self.s.port)
        client.publish(self.topics["status"], "online", qos=1, retain=True)
        if self.s.discovery:
            from .discovery import discovery_messages

            for topic, payload in discovery_messages(self.s.discovery_prefix, self.device_id, self.topics):
                client.publish(topic, payload, qos=1, retain=True)
        with self._lock:
            self._inflight.clear()
            self._early_acks.clear()
            self._sent_up_to = 0
        self.connected.set()
        self._wake.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        if not self._stop.is_set():
            log.warning("disconnected from broker (%s); retrying with back-off up to %ds", reason_code,
                        self.s.reconnect_max_s)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        # paho calls this holding its own message lock: never call into the client from here.
        with self._lock:
            event_id = self._inflight.pop(mid, None)
            if event_id is None:
                self._early_acks.add(mid)  # PUBACK before the sender recorded the mid
        if event_id is not None:
            self.outbox.remove(event_id)
            self._wake.set()

    # sender thread
    def _drain_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            while self.connected.is_set() and not self._stop.is_set():
                with self._lock:
                    room = MAX_INFLIGHT - len(self._inflight)
                    after = self._sent_up_to
                if room <= 0:
                    break
                batch = self.outbox.pending(limit=room, after_seq=after)
                if not batch:
                    break
                for seq, event_id, topic, payload in batch:
                    # Publish outside self._lock: paho's network thread holds its own lock while it calls
                    # _on_publish, which takes self._lock (holding both here would deadlock).
                    info = self.client.publish(topic, payload, qos=1)
                    if info.rc != 0:
                        break
                    with self._lock:
                        self._sent_up_to = seq
                        acked = info.mid in self._early_acks
                        self._early_acks.discard(info.mid)
                        if not acked:
                            self._inflight[info.mid] = event_id
                    if acked:
                        self.outbox.remove(event_id)

    # Sink interface (pipeline thread)
    def submit(self, event: CoughEvent) -> None:
        dropped = self.outbox.add(event.event_id, self.topics["event"], event.to_json())
        if dropped:
            log.warning("outbox full (%d events): dropped the %d oldest", self.outbox.max_events, dropped)
        self._wake.set()

    def publish_stats(self, stats: dict) -> None:
        if self.connected.is_set():
            self.client.publish(self.topics["stats"], json.dumps(stats, sort_keys=True), qos=0, retain=True)

    def depth(self) -> int:
        return self.outbox.depth()

    def dropped(self) -> int:
        return self.outbox.dropped()

    def close(self, timeout: float) -> None:
        """Flush the outbox as far as the broker allows within ``timeout`` s, publish offline, disconnect."""
        deadline = time.monotonic() + timeout
        while self.outbox.depth() and time.monotonic() < deadline:  # a broker still connecting gets its chance
            self._wake.set()
            time.sleep(0.05)
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=2)
        if self.connected.is_set():
            self.client.publish(self.topics["status"], "offline", qos=1, retain=True).wait_for_publish(timeout=2)
        self.client.disconnect()
        self.client.loop_stop()
