"""Rolling cough counts that survive restarts, wall-clock steps and broker outages (schema: edge/counts.schema.json).

A cough, for counts, is an event the daemon published: a sound its cough detector accepted (the event's
``label`` is the classifier's, and every label counts). The outbox stores each cough's label and the moment it
was produced, in the same transaction that stores the event, so the counts hold exactly the events this daemon
produced: never audio, never events heard from the broker.

Time: a cough's age is measured on the boot clock (``CLOCK_BOOTTIME``, which a wall-clock step does not move)
when it was recorded during this boot, and on the wall clock otherwise, never less than the time since boot (a
cough of an earlier boot is older than this boot). When the wall clock steps, the coughs of this boot are
re-anchored to the new wall clock, so that after the next reboot they keep the ages they had.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

SCHEMA_VERSION = 1
HOURS = 24
"""Length of the hourly series, in hours."""
HOUR_S = 3600.0
DAY_S = 86400.0
LOOKBACK_S = 26 * HOUR_S
"""Coughs older than this are in no window (a day since local midnight is at most 25 h long), in seconds."""
BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")


@dataclass(frozen=True)
class ClockReading:
    wall_s: float
    """Wall-clock time, in seconds since the Unix epoch (may step)."""
    boot_s: float
    """Seconds since boot on a clock that wall-clock steps do not move (CLOCK_BOOTTIME)."""
    boot_id: str
    """Identifies this boot; ``boot_s`` readings compare only within one boot."""
    synced: bool = False
    """Whether the kernel says the wall clock is synchronised (NTP)."""


class SystemClock:
    """This machine's clocks. Without a boot id (not Linux) each process counts as its own boot."""

    def __init__(self) -> None:
        try:
            self.boot_id = BOOT_ID_FILE.read_text().strip()
        except OSError:
            self.boot_id = ""
        if not self.boot_id:
            self.boot_id = f"process-{uuid.uuid4()}"
        self._boot_clock = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)

    def read(self) -> ClockReading:
        from .pipeline import clock_synced

        return ClockReading(time.time(), time.clock_gettime(self._boot_clock), self.boot_id, clock_synced())


def iso_utc(wall_s: float) -> str:
    """``2026-11-22T10:55:15.123Z``: the event schema's time format."""
    t = datetime.fromtimestamp(wall_s, timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def local_midnight(wall_s: float) -> float:
    """The wall time of the latest local midnight at or before ``wall_s`` (the device's time zone: TZ or
    /etc/localtime), in seconds since the epoch; correct on days that daylight-saving time makes 23 or 25 h long."""
    t = time.localtime(wall_s)
    return time.mktime((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0, 0, 0, -1))


def local_hour_start(wall_s: float) -> float:
    """The wall time at which the current local hour began, in seconds since the epoch."""
    t = time.localtime(wall_s)
    return wall_s - t.tm_min * 60 - t.tm_sec - (wall_s % 1)


@dataclass(frozen=True)
class Recent:
    """What the store knows at one reading: the coughs within :data:`LOOKBACK_S`, the latest, how many kept."""

    coughs: list
    """``(age_s, label)`` of each cough younger than LOOKBACK_S."""
    last_age_s: float | None
    """Age of the latest cough ever kept, in seconds (None: none kept)."""
    kept: int
    """Coughs in the store (bounded by the retention in days)."""


def rolling_counts(recent: Recent, now: ClockReading, *, device_id: str, keep_days: float) -> dict:
    """The retained counts message (schema version :data:`SCHEMA_VERSION`)."""
    ages = [age for age, _ in recent.coughs]
    since_midnight = now.wall_s - local_midnight(now.wall_s)
    hour0 = local_hour_start(now.wall_s)
    starts = [hour0 - (HOURS - 1 - k) * HOUR_S for k in range(HOURS)]
    hourly = [0] * HOURS
    for age in ages:
        when = now.wall_s - age
        k = int((when - starts[0]) // HOUR_S)
        if 0 <= k < HOURS:
            hourly[k] += 1
    by_label: dict[str, int] = {}
    for age, label in recent.coughs:
        if age < DAY_S:
            by_label[label] = by_label.get(label, 0) + 1
    return {
        "schema": SCHEMA_VERSION, "device_id": device_id, "at_utc": iso_utc(now.wall_s), "clock_synced": now.synced,
        "last_hour": sum(age < HOUR_S for age in ages), "last_24h": sum(age < DAY_S for age in ages),
        "today": sum(age < since_midnight for age in ages),
        "today_since": datetime.fromtimestamp(local_midnight(now.wall_s), timezone.utc).astimezone().isoformat(),
        "hourly": [{"start_utc": iso_utc(s), "coughs": n} for s, n in zip(starts, hourly)],
        "by_label_24h": dict(sorted(by_label.items())),
        "last_cough_utc": None if recent.last_age_s is None else iso_utc(now.wall_s - recent.last_age_s),
        "kept": recent.kept, "kept_days": keep_days,
    }
