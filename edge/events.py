"""The event published for each cough, and its JSON form (schema: edge/event.schema.json)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ModelRef:
    name: str
    sha256: str


@dataclass(frozen=True)
class CoughEvent:
    event_id: str
    """UUID4, unique per event; the subscriber's de-duplication key."""
    device_id: str
    onset_utc: str
    """ISO 8601 UTC time of the onset, from the sample position and the stream's start time."""
    clock_synced: bool
    """Whether the system clock was NTP-synchronised when the stream started."""
    onset_sample: int
    """Onset position in samples since the stream started, at ``sample_rate``: where the burst the event stands for
    starts (``[onset] burst_db``), else the detected sound's onset."""
    sample_rate: int
    duration_s: float
    """Length of the detected sound (or of its burst, where the event stands for one), in seconds."""
    label: str
    """The classifier's decision: its positive label if P(positive) >= threshold, else the most likely other label."""
    probabilities: dict
    """Per-class probabilities from the classifier."""
    threshold: float
    cough_score: float
    """The cough detector's P(cough) for this window."""
    model: ModelRef
    detector: ModelRef
    latency_ms: float
    """Time from the end of the audio window being available to the event being ready, in milliseconds."""
    schema: int = SCHEMA_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

