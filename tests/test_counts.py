"""Rolling cough counts through the sink the daemon uses (MqttSink.submit / .counts) and a real SQLite outbox, with
a clock the test steers: windows, the hourly series, wall-clock steps, reboots, reopening and the bound in days."""
from __future__ import annotations

import time
import uuid
from dataclasses import replace

import pytest

from conftest import load_schema, make_broker
from edge.counts import DAY_S, HOUR_S, ClockReading, local_hour_start, local_midnight
from edge.events import CoughEvent, ModelRef
from edge.mqtt import MqttSettings, MqttSink
from edge.outbox import Outbox

NOON = time.mktime((2026, 11, 20, 12, 0, 0, 0, 0, -1))
"""Local noon on a day without a daylight-saving change: the windows below do not depend on the time zone."""


class SteeredClock:
    """Wall clock and boot clock the test moves: ``advance`` moves both (time passes), ``step`` only the wall
    clock (someone or NTP set it), ``reboot`` starts a new boot."""

    def __init__(self, wall_s: float = NOON, boot_s: float = 1000.0) -> None:
        self.now = ClockReading(wall_s, boot_s, "boot-1", True)
        self.boots = 1

    def read(self) -> ClockReading:
        return self.now

    def advance(self, s: float) -> None:
        self.now = replace(self.now, wall_s=self.now.wall_s + s, boot_s=self.now.boot_s + s)

    def step(self, s: float) -> None:
        self.now = replace(self.now, wall_s=self.now.wall_s + s)

    def reboot(self, down_s: float, wall_error_s: float = 0.0) -> None:
        """Off for ``down_s``, back with the wall clock ``wall_error_s`` off the truth."""
        self.boots += 1
        self.now = ClockReading(self.now.wall_s + down_s + wall_error_s, 20.0, f"boot-{self.boots}", False)


def cough(label: str = "positive") -> CoughEvent:
    return CoughEvent(event_id=str(uuid.uuid4()), device_id="test", onset_utc="2026-01-01T00:00:00.000Z",
                      clock_synced=True, onset_sample=0, sample_rate=16000, duration_s=0.3, label=label,
                      probabilities={"positive": 0.6, "negative": 0.4}, threshold=0.5, cough_score=0.9,
                      model=ModelRef("m", "0" * 64), detector=ModelRef("d", "0" * 64), latency_ms=1.0)


@pytest.fixture
def offline_port(tmp_path):
    return make_broker(tmp_path).port  # never started: the sink keeps everything to itself


def sink_at(port: int, path, clock: SteeredClock, keep_days: float = 30.0) -> MqttSink:
    return MqttSink(MqttSettings(host="127.0.0.1", port=port), "test", Outbox(path), clock=clock,
                    keep_days=keep_days)


def shut(sink: MqttSink) -> None:
    sink.close(timeout=0)
    sink.outbox.close()  # as when the daemon's process ends


def test_windows_hourly_series_and_labels_follow_the_coughs(tmp_path, offline_port):
    jsonschema = pytest.importorskip("jsonschema")
    clock = SteeredClock(NOON - 30 * HOUR_S)
    sink = sink_at(offline_port, tmp_path / "outbox.sqlite", clock)
    try:
        ago = 30
        for hours_ago, label in ((30, "negative"), (20, "positive"), (11.5, "negative"), (2.5, "positive"),
                                 (0.5, "positive"), (0.25, "negative")):
            clock.advance((ago - hours_ago) * HOUR_S)
            ago = hours_ago
            sink.submit(cough(label))
        clock.advance(ago * HOUR_S)
        assert clock.now.wall_s == NOON
        counts = sink.counts()
    finally:
        shut(sink)
    jsonschema.Draft202012Validator(load_schema("counts"), format_checker=jsonschema.FormatChecker()).validate(counts)
    assert (counts["last_hour"], counts["last_24h"], counts["today"]) == (2, 5, 4)  # midnight was 12 h ago
    assert counts["by_label_24h"] == {"negative": 2, "positive": 3}
    assert counts["kept"] == 6 and counts["kept_days"] == 30.0
    series = [h["coughs"] for h in counts["hourly"]]
    assert sum(series) == 5 and series[-1] == 0  # the hour in progress (from noon) has had none yet
    assert series[-2] == 2 and series[-4] == 1 and series[11] == 1 and series[3] == 1  # 11:30, 11:45; 9:30; ...
    assert counts["last_cough_utc"] is not None and counts["clock_synced"] is True


def test_a_wall_clock_step_keeps_each_coughs_age_and_a_reboot_keeps_the_corrected_dates(tmp_path, offline_port):
    clock = SteeredClock()
    path = tmp_path / "outbox.sqlite"
    sink = sink_at(offline_port, path, clock)
    try:
        sink.counts()  # the daemon's first heartbeat anchors the clocks
        sink.submit(cough())
        clock.advance(600)
        clock.step(-2 * HOUR_S)  # set back two hours: the cough must not move into the future
        back = sink.counts()
        clock.step(5 * HOUR_S)  # and forward five: ten minutes old still, not three hours
        forward = sink.counts()
    finally:
        shut(sink)
    assert back["last_hour"] == forward["last_hour"] == 1
    assert back["hourly"][-1]["coughs"] + back["hourly"][-2]["coughs"] == 1
    assert forward["last_cough_utc"] > forward["hourly"][-2]["start_utc"]  # re-dated by the new wall clock
    clock.reboot(down_s=1800)  # a reboot: the boot clock restarts, the cough's re-dated wall time carries its age
    sink = sink_at(offline_port, path, clock)
    try:
        after = sink.counts()
    finally:
        shut(sink)
    assert after["last_hour"] == 1 and after["last_24h"] == 1  # 10 min + 30 min down = 40 min old


def test_coughs_of_an_earlier_boot_are_never_younger_than_this_boot(tmp_path, offline_port):
    clock = SteeredClock()
    path = tmp_path / "outbox.sqlite"
    sink = sink_at(offline_port, path, clock)
    try:
        sink.submit(cough())
    finally:
        shut(sink)
    clock.reboot(down_s=0, wall_error_s=-3 * DAY_S)  # back with a stale clock (no RTC, no NTP yet)
    clock.advance(2 * HOUR_S)  # this boot has run two hours
    sink = sink_at(offline_port, path, clock)
    try:
        counts = sink.counts()
    finally:
        shut(sink)
    assert counts["last_hour"] == 0 and counts["last_24h"] == 1 and counts["kept"] == 1
    assert sum(h["coughs"] for h in counts["hourly"]) == 1


def test_counts_survive_reopening_and_the_store_forgets_coughs_older_than_keep_days(tmp_path, offline_port):
    clock = SteeredClock()
    path = tmp_path / "outbox.sqlite"
    sink = sink_at(offline_port, path, clock, keep_days=30)
    try:
        sink.submit(cough())
        clock.advance(29 * DAY_S)
        sink.submit(cough())
        clock.advance(2 * DAY_S)  # the first cough is 31 days old now, the second 2 days
        sink.submit(cough())
        before = sink.counts()
    finally:
        shut(sink)
    assert before["kept"] == 2 and before["last_24h"] == 1
    sink = sink_at(offline_port, path, clock, keep_days=1)  # restarted with a shorter retention
    try:
        assert sink.counts()["kept"] == 1
    finally:
        shut(sink)


def test_local_midnight_and_hour_start_are_the_devices():
    wall = NOON + 1234.5
    assert local_midnight(wall) == NOON - 12 * HOUR_S
    assert local_hour_start(wall) == NOON and local_hour_start(NOON + 3599) == NOON
