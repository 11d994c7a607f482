"""Settings of `edge run`: one frozen dataclass per section, one ``--<section>-<field>`` flag per field.

Precedence: defaults < /etc/coughwatch/edge.toml (or --config) < COUGHWATCH_<SECTION>_<FIELD> < flags.
"""
from __future__ import annotations

import math
import socket
import string
from dataclasses import dataclass, field
from pathlib import Path

from .audio import MicSettings
from .mqtt import MqttSettings
from .onset import OnsetSettings
from .shipped import default_model
from .verifier import AUTO

MAX_DEVICE_ID = 64
"""Longest device id, in characters (it is part of topics and of the MQTT client id)."""
DEVICE_ID_CHARS = frozenset(string.ascii_letters + string.digits + "-_")
DEFAULT_CONFIG = Path("/etc/coughwatch/edge.toml")


def default_device_id() -> str:
    """The host name up to its first dot (``kitchen.lan`` -> ``kitchen``): a device id has no dots."""
    return socket.gethostname().split(".")[0]


def check_device_id(value: str) -> None:
    """The one rule for a device id (topics, events, MQTT client id); ValueError saying it."""
    if not 1 <= len(value) <= MAX_DEVICE_ID or not all(ch in DEVICE_ID_CHARS for ch in value):
        raise ValueError(f"id = {value[:80]!r} must be 1..{MAX_DEVICE_ID} ASCII letters, digits, '-' or '_'")


@dataclass(frozen=True)
class ModelSettings:
    detector: str = field(default_factory=lambda: default_model("detector"))
    """Cough-vs-other model (ONNX, coughwatch contract); rejects sounds that are not coughs."""
    classifier: str = field(default_factory=lambda: default_model("classifier"))
    """Model that scores each accepted cough (ONNX, coughwatch contract)."""
    threads: int = 1
    """onnxruntime intra-op threads per model."""
    detector_threshold: float = -1.0
    """Override the cough detector's threshold in [0, 1]; -1 = use the one in its metadata (with a verifier, the
    verifier's threshold of the mixed score)."""
    verifier: str = AUTO
    """Verifier folder (``edge.verifier``): a pretrained tagger's second opinion, mixed into the cough detector's
    score of each sound; ``auto`` = the shipped one where it was tuned with this detector (``edge.verifier.resolve``),
    empty = none."""

    def __post_init__(self) -> None:
        if not 1 <= self.threads <= 64:
            raise ValueError(f"threads = {self.threads} must be in 1..64")
        if not math.isfinite(self.detector_threshold) or (
                self.detector_threshold != -1.0 and not 0 <= self.detector_threshold <= 1):
            raise ValueError(f"detector_threshold = {self.detector_threshold} must be in [0, 1] or -1")


@dataclass(frozen=True)
class DeviceSettings:
    id: str = field(default_factory=default_device_id)
    """Device id: in topics, in events, and in the MQTT client id (1..64 ASCII letters, digits, - and _)."""
    outbox: str = "/var/lib/coughwatch/outbox.sqlite"
    """SQLite outbox file (events wait here until the broker acknowledges them)."""
    outbox_max_events: int = 10000
    """Outbox bound; the oldest events are dropped (and counted) beyond it."""
    silence_s: float = 30.0
    """Report the microphone as silent after this many seconds of digital silence (1..86400)."""
    shutdown_flush_s: float = 5.0
    """On SIGTERM, seconds to keep flushing the outbox to the broker before exiting (0..3600)."""
    counts_days: float = 30.0
    """Days each cough's time and label are kept in the outbox file for the rolling counts (1..3650)."""

    def __post_init__(self) -> None:
        check_device_id(self.id)
        if not self.outbox:
            raise ValueError("outbox must name a file")
        if not 1 <= self.outbox_max_events <= 10_000_000:
            raise ValueError(f"outbox_max_events = {self.outbox_max_events} must be in 1..10000000")
        if not 1 <= self.silence_s <= 86400:  # also refuses NaN
            raise ValueError(f"silence_s = {self.silence_s} must be in 1..86400 seconds")
        if not 0 <= self.shutdown_flush_s <= 3600:
            raise ValueError(f"shutdown_flush_s = {self.shutdown_flush_s} must be in 0..3600 seconds")
        if not 1 <= self.counts_days <= 3650:  # also refuses NaN
            raise ValueError(f"counts_days = {self.counts_days} must be in 1..3650 days")


@dataclass(frozen=True)
class EdgeSettings:
    device: DeviceSettings = field(default_factory=DeviceSettings)
    mic: MicSettings = field(default_factory=MicSettings)
    onset: OnsetSettings = field(default_factory=OnsetSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    mqtt: MqttSettings = field(default_factory=MqttSettings)

    def __post_init__(self) -> None:
        if self.onset.scan_ms > 0 and self.model.verifier not in ("", AUTO):
            raise ValueError(f"[model] verifier = {self.model.verifier!r} judges the energy gate's sounds, and with "
                             f"[onset] scan_ms = {self.onset.scan_ms:g} there are none (set scan_ms = 0, or verifier = "
                             '"" or "auto", which runs without it while scanning)')
