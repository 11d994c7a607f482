"""Settings of `edge run`: one frozen dataclass per section, one ``--<section>-<field>`` flag per field.

Precedence: defaults < /etc/coughwatch/edge.toml (or --config) < COUGHWATCH_<SECTION>_<FIELD> < flags.
"""
from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path

from .audio import MicSettings
from .mqtt import MqttSettings
from .onset import OnsetSettings

DEFAULT_CONFIG = Path("/etc/coughwatch/edge.toml")
MODELS_DIR = Path(__file__).resolve().parent.parent / "models"


def _default_model(name: str) -> str:
    for base in (Path("/var/lib/coughwatch/models"), MODELS_DIR):
        if (base / name / "student.int8.onnx").is_file():
            return str(base / name / "student.int8.onnx")
    return str(MODELS_DIR / name / "student.int8.onnx")


@dataclass(frozen=True)
class ModelSettings:
    detector: str = field(default_factory=lambda: _default_model("cough-detector"))
    """Cough-vs-other model (ONNX, coughwatch contract); rejects sounds that are not coughs."""
    classifier: str = field(default_factory=lambda: _default_model("covid-screen"))
    """Model that scores each accepted cough (ONNX, coughwatch contract)."""
    threads: int = 1
    """onnxruntime intra-op threads per model."""
    detector_threshold: float = -1.0
    """Override the cough detector's threshold in [0, 1]; -1 = use the one in its metadata."""

    def __post_init__(self) -> None:
        if not 1 <= self.threads <= 64:
            raise ValueError(f"threads = {self.threads} must be in 1..64")
        if self.detector_threshold != -1.0 and not 0 <= self.detector_threshold <= 1:
            raise ValueError(f"detector_threshold = {self.detector_threshold} must be in [0, 1] or -1")


@dataclass(frozen=True)
class DeviceSettings:
    id: str = field(default_factory=socket.gethostname)
    """Device id: in topics, in events, and in the MQTT client id (letters, digits, - and _)."""
    outbox: str = "/var/lib/coughwatch/outbox.sqlite"
    """SQLite outbox file (events wait here until the broker acknowledges them)."""
    outbox_max_events: int = 10000
    """Outbox bound; the oldest events are dropped (and counted) beyond it."""
    silence_s: float = 30.0
    """Report the microphone as silent after this many seconds of digital silence."""
    shutdown_flush_s: float = 5.0
    """On SIGTERM, seconds to keep flushing the outbox to the broker before exiting."""

    def __post_init__(self) -> None:
        if not self.id or not all(ch.isalnum() or ch in "-_" for ch in self.id):
            raise ValueError(f"id = {self.id!r} must be non-empty letters, digits, '-' or '_'")
        if self.outbox_max_events < 1:
            raise ValueError(f"outbox_max_events = {self.outbox_max_events} must be >= 1")


@dataclass(frozen=True)
class EdgeSettings:
    device: DeviceSettings = field(default_factory=DeviceSettings)
    mic: MicSettings = field(default_factory=MicSettings)
    onset: OnsetSettings = field(default_factory=OnsetSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    mqtt: MqttSettings = field(default_factory=MqttSettings)
