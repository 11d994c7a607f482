"""Result sinks: MQTT (paho-mqtt v2, via the durable outbox) or JSON lines on stdout.

The pipeline calls ``submit`` and never waits for the network: MQTT publishing runs in its own
thread, which drains the outbox whenever the client is connected and deletes an event only when the
broker's PUBACK arrives. After a reconnect every unacknowledged event is sent again (QoS 1 is
at-least-once; subscribers de-duplicate by ``event_id``, as ``edge listen`` does).
"""
from __future__ import annotations

import functools
import json
import logging
import os
import socket
import sqlite3
import ssl
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol, TextIO

from .counts import DAY_S, LOOKBACK_S, ClockReading, Recent, SystemClock, rolling_counts
from .discovery import PUBLISHED_FLAG, DeviceInfo, discovery_messages, removal_messages, software_version
from .events import CoughEvent
from .outbox import Outbox

log = logging.getLogger(__name__)
MAX_INFLIGHT = 20
"""QoS 1 messages awaiting PUBACK at once (paho's window and the outbox sender's batch)."""
_NO_ACK = object()
MAX_TOPIC_BYTES = 65535
"""MQTT's limit on a topic name (and on user names and passwords), in UTF-8 bytes."""
SESSION_TAKEN_OVER = 0x8E
"""MQTT v5 DISCONNECT reason: another client connected with our client id."""
SHORT_CONNECTION_S = 10.0
"""A connection dropped this soon after it was made counts towards "session taken over", in seconds."""
FLAPS_FOR_TAKEOVER = 3
"""Short connections in a row after which a broker without reason 0x8E is taken to hand our session to another."""
REPEAT_LOG_S = 60.0
"""A fault that persists is logged when it starts and then at most once per this many seconds."""
PRUNE_EVERY_S = 3600.0
"""How often coughs older than the counts' retention are deleted, in seconds."""
MAX_COUGHS = 1_000_000
"""Most coughs kept for the counts whatever their age (the oldest go first): bounds the file."""
CLOCK_STEP_S = 1.0
"""A change of the wall clock against the boot clock beyond this is a step, in seconds."""


def check_topic_prefix(name: str, value: str) -> None:
    """A topic prefix we publish under: non-empty, no wildcards or NUL, not a broker ``$`` topic, within limits."""
    bad = [ch for ch in ("+", "#", "\0") if ch in value]
    if not value or bad or value.startswith("$") or len(value.encode()) > MAX_TOPIC_BYTES // 2:
        raise ValueError(f"{name} = {value[:80]!r} must be non-empty, without '+', '#' or NUL, not start with '$' "
                         f"(broker topics) and be at most {MAX_TOPIC_BYTES // 2} UTF-8 bytes")


def check_host(value: str) -> None:
    """A host name or address without a port or scheme (``host = "10.0.0.2:1883"`` is refused)."""
    import ipaddress

    if not value:
        return
    if ":" in value:
        try:
            ipaddress.IPv6Address(value)
        except ValueError:
            raise ValueError(f"host = {value!r} must be a host name or address without a port or scheme; "
                             "put the port in mqtt.port") from None
    if len(value) > 253 or any(ch.isspace() or ch in "/@[]" or ord(ch) < 32 for ch in value):
        raise ValueError(f"host = {value[:80]!r} is not a valid host name or address")


@dataclass(frozen=True)
class MqttSettings:
    host: str = ""
    """Broker host name or address, without a port; empty = print events as JSON lines on stdout instead."""
    port: int = 1883
    """Broker TCP port (8883 is usual for TLS)."""
    username: str = ""
    """User name for password authentication (empty = none)."""
    password: str = field(default="", repr=False, metadata={"secret": True})
    """Password: COUGHWATCH_MQTT_PASSWORD or the config file only (no flag: a flag shows in `ps`)."""
    password_file: str = ""
    """File whose first line is the password (instead of COUGHWATCH_MQTT_PASSWORD; see edge.broker)."""
    tls: bool = False
    """Connect with TLS."""
    ca_file: str = ""
    """CA bundle (PEM) to verify the broker with; empty = the system's."""
    topic_prefix: str = "coughwatch"
    """Topics are <topic_prefix>/<device_id>/{event,status,stats,counts,last_cough}."""
    keepalive_s: int = 30
    """MQTT keep-alive interval in seconds (5..65535)."""
    reconnect_max_s: int = 60
    """Upper bound of the exponential reconnect back-off, in seconds (1..3600)."""
    stats_interval_s: float = 30.0
    """Seconds between retained stats heartbeats (0.1..86400)."""
    discovery: bool = False
    """Publish Home Assistant MQTT discovery configs (turned off: the ones published before are removed)."""
    discovery_prefix: str = "homeassistant"
    """Home Assistant's discovery topic prefix."""

    def __post_init__(self) -> None:
        check_host(self.host)
        if not 0 < self.port < 65536:
            raise ValueError(f"port = {self.port} must be in 1..65535")
        if not 5 <= self.keepalive_s <= 65535:
            raise ValueError(f"keepalive_s = {self.keepalive_s} must be in 5..65535 seconds (MQTT's limit)")
        if not 1 <= self.reconnect_max_s <= 3600:
            raise ValueError(f"reconnect_max_s = {self.reconnect_max_s} must be in 1..3600 seconds")
        if not 0.1 <= self.stats_interval_s <= 86400:  # also refuses NaN
            raise ValueError(f"stats_interval_s = {self.stats_interval_s} must be in 0.1..86400 seconds")
        check_topic_prefix("topic_prefix", self.topic_prefix)
        check_topic_prefix("discovery_prefix", self.discovery_prefix)
        if len(self.username.encode()) > MAX_TOPIC_BYTES or len(self.password.encode()) > MAX_TOPIC_BYTES:
            raise ValueError(f"username and password must be at most {MAX_TOPIC_BYTES} UTF-8 bytes each")
        if self.ca_file and not self.tls:
            log.warning("mqtt.ca_file is set but mqtt.tls is off: the connection is not encrypted")


class Sink(Protocol):
    def submit(self, event: CoughEvent) -> None: ...
    def publish_stats(self, stats: dict) -> None: ...
    def depth(self) -> int: ...
    def dropped(self) -> int: ...
    def health(self) -> dict: ...
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

    def health(self) -> dict:
        return {}

    def close(self, timeout: float) -> None:
        self.stream.flush()


def guarded(fn):
    """Wrap a paho callback: an exception is logged, never raised into (and never stops) paho's network thread."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception:  # noqa: BLE001 - the network thread must survive whatever a callback does
            log.exception("error in MQTT callback %s (delivery goes on)", fn.__name__)
            return None
    return wrapper


def _client_class():
    import paho.mqtt.client as mqtt

    class Client(mqtt.Client):
        """paho's client, remembering why the last connection attempt failed (paho's on_connect_fail is not told)."""

        last_connect_error: OSError | None = None

        def reconnect(self):
            try:
                return super().reconnect()
            except OSError as exc:
                self.last_connect_error = exc
                raise

    return Client


def describe_error(exc: BaseException | None, tls: bool = False) -> str:
    """The cause of a failed connection attempt in words (refused, unresolvable host, TLS, timeout, ...)."""
    if tls and isinstance(exc, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)):
        return "the broker closed the connection during the TLS handshake (is the port a TLS listener?)"
    if exc is None:
        return "unknown cause"
    if isinstance(exc, socket.gaierror):
        return f"host name cannot be resolved ({exc.strerror or exc})"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted: {exc.verify_message or exc.reason} (check mqtt.ca_file)"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc} (is the port a TLS listener?)"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (nothing listening on that port?)"
    if isinstance(exc, ConnectionResetError):
        return "connection reset by the broker"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "timed out"
    return f"{type(exc).__name__}: {exc.strerror or exc}" if isinstance(exc, OSError) else str(exc)


def make_client(s: MqttSettings, client_id: str, *, will_topic: str | None = None):
    """A paho v2 client speaking MQTT v5, with TLS, credentials, last will and back-off (not yet connected)."""
    import paho.mqtt.client as mqtt

    from .config import ConfigError

    client = _client_class()(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv5)
    client.suppress_exceptions = True  # second line of defence behind `guarded`: paho's thread must never die
    if s.username:
        client.username_pw_set(s.username, s.password or None)
    if s.tls:
        if s.ca_file and not os.path.isfile(s.ca_file):
            raise ConfigError(f"mqtt.ca_file = {s.ca_file!r}: no such file")
        try:
            client.tls_set(ca_certs=s.ca_file or None, cert_reqs=ssl.CERT_REQUIRED)
        except ssl.SSLError as exc:
            raise ConfigError(f"mqtt.ca_file = {s.ca_file!r} is not a PEM CA certificate ({exc.reason})") from exc
        except OSError as exc:
            raise ConfigError(f"mqtt.ca_file = {s.ca_file!r} cannot be read: {exc.strerror}") from exc
    if will_topic:
        client.will_set(will_topic, "offline", qos=1, retain=True)
    client.reconnect_delay_set(min_delay=1, max_delay=s.reconnect_max_s)
    client.max_inflight_messages_set(MAX_INFLIGHT)
    return client


def connect_properties(session_expiry_s: int = 0):
    """CONNECT properties; a persistent session needs a session expiry interval under MQTT v5."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = session_expiry_s
    return props


class Throttle:
    """Log a persisting fault when it starts, then at most every ``every_s`` seconds, with a count."""

    def __init__(self, every_s: float = REPEAT_LOG_S) -> None:
        self.every_s, self.count, self._last = every_s, 0, float("-inf")

    def hit(self) -> bool:
        """Count one occurrence; True when this one should be logged."""
        self.count += 1
        now = time.monotonic()
        if self.count == 1 or now - self._last >= self.every_s:
            self._last = now
            return True
        return False

    def reset(self) -> int:
        n, self.count, self._last = self.count, 0, float("-inf")
        return n


class MqttSink:
    """Events through the outbox; status, stats, rolling counts (edge/counts.py) and discovery configs beside."""

    def __init__(self, s: MqttSettings, device_id: str, outbox: Outbox, *, info: DeviceInfo | None = None,
                 clock: SystemClock | None = None, keep_days: float = 30.0) -> None:
        self.s, self.device_id, self.outbox = s, device_id, outbox
        self.info = info or DeviceInfo(software_version(), "unknown", "unknown")
        self.clock, self.keep_days = clock or SystemClock(), keep_days
        base = f"{s.topic_prefix}/{device_id}"
        self.topics = {"event": f"{base}/event", "status": f"{base}/status", "stats": f"{base}/stats",
                       "counts": f"{base}/counts", "last_cough": f"{base}/last_cough"}
        self.client = make_client(s, f"coughwatch-{device_id}", will_topic=self.topics["status"])
        self.client.on_connect = guarded(self._on_connect)
        self.client.on_connect_fail = guarded(self._on_connect_fail)
        self.client.on_disconnect = guarded(self._on_disconnect)
        self.client.on_publish = guarded(self._on_publish)
        self._lock = threading.Lock()
        self._inflight: dict[int, str] = {}
        self._early_acks: dict[int, object] = {}
        self._sent_up_to = 0
        self._unstored: dict[str, tuple[str, str]] = {}  # event_id -> (topic, payload): the outbox could not take it
        self._unstored_coughs: dict[str, tuple[str, ClockReading]] = {}  # their coughs, until stored for the counts
        self._other_mids: set[int] = set()  # QoS 1 publishes that are not events (status, counts, discovery)
        self._counts_due = threading.Event()
        self._anchor: float | None = None  # wall clock minus boot clock when the coughs were last re-anchored
        self._last_prune = float("-inf")
        self._counts_fail = Throttle()
        self._unstored_sent: set[str] = set()
        self._undeleted: set[str] = set()  # acknowledged, but the outbox could not delete them yet
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.connected = threading.Event()
        self._conn_fail, self._reject_log, self._store_fail = Throttle(), Throttle(), Throttle()
        self._disconnect_log, self._connected_at, self._flaps = Throttle(), float("-inf"), 0
        self._h = {"mqtt_error": None, "publish_rejected": 0, "last_rejection": None, "outbox_write_errors": 0,
                   "outbox_error": None}
        self._retry_rejected_at = float("inf")
        self._memory_dropped = 0
        self.client.connect_async(s.host, s.port, keepalive=s.keepalive_s, clean_start=True,
                                  properties=connect_properties())
        self.client.loop_start()
        self._thread = threading.Thread(target=self._drain_loop, name="mqtt-outbox", daemon=True)
        self._thread.start()

    # paho callbacks (network thread)
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._connection_failed(f"the broker refused the connection: {reason_code}")
            return
        failures = self._conn_fail.reset()
        log.info("connected to %s:%d%s", self.s.host, self.s.port,
                 f" after {failures} failed attempts" if failures else "")
        self._h["mqtt_error"] = None
        self._connected_at = time.monotonic()
        with self._lock:
            self._inflight.clear()
            self._early_acks.clear()
            self._other_mids.clear()
            self._unstored_sent.clear()
            self._sent_up_to = 0
        self._publish_other(self.topics["status"], "online")
        self._publish_discovery()
        self.connected.set()
        self._counts_due.set()
        self._wake.set()

    def _publish_discovery(self) -> None:
        """Discovery configs when on; when off, empty ones for those published before (Home Assistant removes
        the entities)."""
        prefix = self.s.discovery_prefix
        try:
            if self.s.discovery:
                for topic, payload in discovery_messages(prefix, self.device_id, self.topics, self.info):
                    self._publish_other(topic, payload)
                self.outbox.set_flag(PUBLISHED_FLAG, 1)
            elif self.outbox.flag(PUBLISHED_FLAG):
                for topic, payload in removal_messages(prefix, self.device_id, self.topics):
                    self._publish_other(topic, payload)
                self.outbox.set_flag(PUBLISHED_FLAG, 0)
                log.info("discovery is off: removed the Home Assistant entities published before")
        except sqlite3.Error as exc:
            log.warning("outbox %s: cannot note whether discovery configs are published: %s", self.outbox.path, exc)

    def _publish_other(self, topic: str, payload: str, qos: int = 1, retain: bool = True):
        """Publish a message that is not an event: its PUBACK must never be taken for an event's."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if qos and info.rc == 0:
            with self._lock:
                if self._early_acks.pop(info.mid, _NO_ACK) is _NO_ACK:
                    self._other_mids.add(info.mid)
        return info

    def _on_connect_fail(self, client, userdata) -> None:
        self._connection_failed(describe_error(getattr(client, "last_connect_error", None), self.s.tls))

    def _connection_failed(self, cause: str) -> None:
        self._h["mqtt_error"] = cause
        if self._conn_fail.hit():
            level = logging.ERROR if self._conn_fail.count == 1 else logging.WARNING
            log.log(level, "cannot connect to broker %s:%d: %s (%d attempts so far; retrying with back-off up to "
                    "%ds)", self.s.host, self.s.port, cause, self._conn_fail.count, self.s.reconnect_max_s)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        if self._stop.is_set():
            return
        short = time.monotonic() - self._connected_at < SHORT_CONNECTION_S
        self._flaps = self._flaps + 1 if short else 0
        takeover = f"another client connected with our client id coughwatch-{self.device_id} (two devices with " \
                   f"device.id = {self.device_id!r}?)"
        if getattr(reason_code, "value", None) == SESSION_TAKEN_OVER:
            cause = f"session taken over: {takeover}"
        elif self._flaps >= FLAPS_FOR_TAKEOVER:
            # Brokers before MQTT v5's reason 0x8E (mosquitto < 2.0.15) just close the connection.
            cause = (f"connection dropped {self._flaps} times in a row within {SHORT_CONNECTION_S:.0f} s of "
                     f"connecting ({reason_code}): probably session taken over: {takeover}")
        else:
            cause = f"disconnected from broker ({reason_code})"
        self._h["mqtt_error"] = cause
        if self._disconnect_log.hit() or self._flaps == FLAPS_FOR_TAKEOVER:
            log.warning("%s; retrying with back-off up to %ds", cause, self.s.reconnect_max_s)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        # paho calls this holding its own message lock: never call into the client from here.
        with self._lock:
            if mid in self._other_mids:
                self._other_mids.discard(mid)
                return
            event_id = self._inflight.pop(mid, None)
            if event_id is None:
                self._early_acks[mid] = reason_code  # PUBACK before the sender recorded the mid
        if event_id is not None:
            self._acknowledged(event_id, reason_code)

    def _acknowledged(self, event_id: str, reason_code) -> None:
        """A PUBACK: success deletes the event; a refusal (reason code >= 0x80) keeps it and says why."""
        if getattr(reason_code, "is_failure", False):
            self._rejected(event_id, reason_code)
            return
        with self._lock:
            self._unstored.pop(event_id, None)
        self._delete(event_id)
        self._wake.set()

    def _delete(self, event_id: str) -> bool:
        """Delete an acknowledged event; if the disk refuses, it is retried (a duplicate at worst, never a loss)."""
        try:
            self.outbox.remove(event_id)
        except sqlite3.Error as exc:
            with self._lock:
                self._undeleted.add(event_id)
            self._store_failed(f"cannot delete an acknowledged event: {exc}", 0)
            return False
        with self._lock:
            self._undeleted.discard(event_id)
        return True

    def _rejected(self, event_id: str, reason_code) -> None:
        topic = self.topics["event"]
        self._h["publish_rejected"] += 1
        self._h["last_rejection"] = f"{topic}: {reason_code}"
        self._retry_rejected_at = min(self._retry_rejected_at, time.monotonic() + self.s.reconnect_max_s)
        if self._reject_log.hit():
            log.error("broker refused event %s on %s: %s (kept in the outbox, %d refused so far; does the broker's "
                      "ACL grant this client write access to the topic?)", event_id, topic, reason_code,
                      self._reject_log.count)

    def _store_failed(self, what: str, events: int) -> None:
        self._h["outbox_write_errors"] += events
        self._h["outbox_error"] = what
        if self._store_fail.hit():
            log.error("outbox %s: %s (%d failures so far; events are kept in memory and published, and stored "
                      "again when the disk allows)", self.outbox.path, what, self._store_fail.count)

    # sender thread
    def _drain_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            try:
                self._store_unstored()
                self._retry_rejected()
                while self.connected.is_set() and not self._stop.is_set() and self._send_batch():
                    pass
                if self.connected.is_set() and self._counts_due.is_set():
                    self._counts_due.clear()
                    self._publish_counts()
            except sqlite3.Error as exc:
                self._store_failed(f"cannot read pending events: {exc}", 0)
                self._stop.wait(1.0)
            except Exception:  # noqa: BLE001 - the sender must outlive any single failure
                log.exception("outbox sender failed; retrying in 1 s")
                self._stop.wait(1.0)

    def _send_batch(self) -> bool:
        """Publish what fits in the in-flight window; True if something was sent and more may follow."""
        with self._lock:
            room = MAX_INFLIGHT - len(self._inflight)
            after = self._sent_up_to
            memory = [(e, tp) for e, tp in self._unstored.items() if e not in self._unstored_sent][:max(room, 0)]
        if room <= 0:
            return False
        for event_id, (topic, payload) in memory:
            if not self._publish(None, event_id, topic, payload):
                return False
        batch = self.outbox.pending(limit=room - len(memory), after_seq=after) if room > len(memory) else []
        for seq, event_id, topic, payload in batch:
            if not self._publish(seq, event_id, topic, payload):
                return False
        return bool(memory or batch)

    def _publish(self, seq: int | None, event_id: str, topic: str, payload: str) -> bool:
        # Publish outside self._lock: paho's network thread holds its own lock while it calls
        # _on_publish, which takes self._lock (holding both here would deadlock).
        info = self.client.publish(topic, payload, qos=1)
        if info.rc != 0:
            return False
        with self._lock:
            if seq is None:
                self._unstored_sent.add(event_id)
            else:
                self._sent_up_to = seq
            early = self._early_acks.pop(info.mid, _NO_ACK)
            if early is _NO_ACK:
                self._inflight[info.mid] = event_id
        if early is not _NO_ACK:
            self._acknowledged(event_id, early)
        return True

    def _store_unstored(self) -> None:
        """Move events (and coughs) the outbox could not take earlier into it, now that it may have room again."""
        with self._lock:
            waiting = list(self._unstored.items())
            delivered = [(e, c) for e, c in self._unstored_coughs.items() if e not in self._unstored]
            undeleted = list(self._undeleted)
        for event_id in undeleted:
            if not self._delete(event_id):
                break
        stored = 0
        for event_id, (topic, payload) in waiting + [(e, (None, None)) for e, _ in delivered]:
            with self._lock:
                cough = self._unstored_coughs.get(event_id)
            if topic is None and cough is None:
                continue
            try:
                if topic is None:  # delivered from memory before it could be stored: its cough still counts
                    self.outbox.add_cough(event_id, cough)
                else:
                    self.outbox.add(event_id, topic, payload, cough)
            except sqlite3.Error as exc:
                self._store_failed(f"still cannot store events: {exc}", 0)
                break
            with self._lock:
                self._unstored.pop(event_id, None)
                self._unstored_coughs.pop(event_id, None)
            stored += topic is not None
        if stored and not self._unstored:
            self._store_fail.reset()
            self._h["outbox_error"] = None
            log.info("outbox %s writable again: %d waiting events stored", self.outbox.path, stored)

    def _retry_rejected(self) -> None:
        """Events the broker refused stay stored; send them again now and then (an ACL may have been fixed)."""
        with self._lock:
            if time.monotonic() < self._retry_rejected_at or self._inflight:
                return
            self._retry_rejected_at = float("inf")
            self._sent_up_to = 0
            self._unstored_sent.clear()

    # Sink interface (pipeline thread)
    def submit(self, event: CoughEvent) -> None:
        """Store the event, and its cough for the counts, in one transaction; then publish both (not waiting)."""
        topic, payload = self.topics["event"], event.to_json()
        cough = (event.label, self.clock.read())
        try:
            dropped = self.outbox.add(event.event_id, topic, payload, cough)
        except sqlite3.Error as exc:
            with self._lock:
                self._unstored[event.event_id] = (topic, payload)
                self._unstored_coughs[event.event_id] = cough
                if len(self._unstored) > self.outbox.max_events:
                    self._unstored.pop(next(iter(self._unstored)))
                    self._memory_dropped += 1
                if len(self._unstored_coughs) > self.outbox.max_events:
                    self._unstored_coughs.pop(next(iter(self._unstored_coughs)))
            self._store_failed(f"cannot store event {event.event_id}: {exc}", 1)
        else:
            if dropped:
                log.warning("outbox full (%d events): dropped the %d oldest", self.outbox.max_events, dropped)
        self._counts_due.set()
        self._wake.set()

    def publish_stats(self, stats: dict) -> None:
        """The heartbeat; the counts follow it, so that their hour windows roll on without new coughs."""
        if self.connected.is_set():
            self.client.publish(self.topics["stats"], json.dumps(stats, sort_keys=True), qos=0, retain=True)
        self._counts_due.set()
        self._wake.set()

    def counts(self) -> dict:
        """The rolling counts now: the outbox's coughs, and those waiting in memory for a writable disk."""
        now = self.clock.read()
        self._maintain_coughs(now)
        recent = self.outbox.recent_coughs(now)
        with self._lock:
            memory = [(max(0.0, now.boot_s - at.boot_s), label) for label, at in self._unstored_coughs.values()]
        if memory:
            ages = [age for age, _ in memory] + ([recent.last_age_s] if recent.last_age_s is not None else [])
            recent = Recent(recent.coughs + [c for c in memory if c[0] < LOOKBACK_S], min(ages),
                            recent.kept + len(memory))
        return rolling_counts(recent, now, device_id=self.device_id, keep_days=self.keep_days)

    def _maintain_coughs(self, now: ClockReading) -> None:
        """Re-anchor this boot's coughs when the wall clock has stepped (and once at start); prune hourly."""
        offset = now.wall_s - now.boot_s
        if self._anchor is None or abs(offset - self._anchor) > CLOCK_STEP_S:
            moved = self.outbox.reanchor_coughs(now)
            if self._anchor is not None:
                log.warning("the wall clock stepped by %+.1f s; the counts keep each cough's age (%d coughs of this "
                            "boot re-dated)", offset - self._anchor, moved)
            self._anchor = offset
        if time.monotonic() - self._last_prune >= PRUNE_EVERY_S:
            pruned = self.outbox.prune_coughs(now, self.keep_days * DAY_S, MAX_COUGHS)
            if pruned:
                log.info("forgot %d coughs older than %g days", pruned, self.keep_days)
            self._last_prune = time.monotonic()

    def _publish_counts(self) -> list:
        """The counts, and the latest cough's time on its own topic once there is one (never an empty value,
        which Home Assistant's timestamp sensor would take for an invalid time); returns the publishes' infos."""
        try:
            counts = self.counts()
        except sqlite3.Error as exc:
            if self._counts_fail.hit():
                log.error("outbox %s: cannot read the coughs for the counts: %s (%d failures so far)",
                          self.outbox.path, exc, self._counts_fail.count)
            return []
        self._counts_fail.reset()
        sent = [self._publish_other(self.topics["counts"], json.dumps(counts, sort_keys=True))]
        if counts["last_cough_utc"] is not None:
            sent.append(self._publish_other(self.topics["last_cough"], counts["last_cough_utc"]))
        return sent

    def depth(self) -> int:
        return self.outbox.depth()

    def dropped(self) -> int:
        return self.outbox.dropped() + self._memory_dropped

    def health(self) -> dict:
        """Connection state, the last connection error, refused publishes and outbox write failures."""
        with self._lock:
            unstored = len(self._unstored)
        return {"mqtt": "connected" if self.connected.is_set() else "disconnected", **self._h,
                "outbox_unstored": unstored}

    def _waiting(self) -> int:
        with self._lock:
            unstored = len(self._unstored)
        try:
            return self.outbox.depth() + unstored
        except sqlite3.Error:
            return unstored

    def close(self, timeout: float) -> None:
        """Flush the outbox as far as the broker allows within ``timeout`` s, publish offline, disconnect."""
        deadline = time.monotonic() + timeout
        while self._waiting() and time.monotonic() < deadline:  # a broker still connecting gets its chance
            self._wake.set()
            time.sleep(0.05)
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=2)
        with self._lock:
            lost = len(self._unstored)
        if lost:
            log.error("exiting with %d events that neither the outbox nor the broker took: they are lost", lost)
        if self.connected.is_set():
            for info in [*self._publish_counts(), self._publish_other(self.topics["status"], "offline")]:
                if info.rc == 0:
                    info.wait_for_publish(timeout=2)
        self.client.disconnect()
        self.client.loop_stop()
