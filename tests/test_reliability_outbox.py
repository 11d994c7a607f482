"""Outbox faults with real SQLite files: bad paths, foreign files, a second daemon, a full or read-only disk."""
from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import stat
import subprocess
import time
import uuid

import pytest

from conftest import DEMO, make_broker
from test_edge_io import Subscriber, edge, run_args


def run_with_outbox(port: int, tmp_path, outbox) -> subprocess.CompletedProcess:
    return edge(*run_args(port, tmp_path, "--source", str(DEMO), "--fast", "--device-outbox", str(outbox)))


def test_start_up_problems_name_the_outbox_and_the_cause(tmp_path):
    (tmp_path / "plain-file").write_text("x")
    foreign = tmp_path / "foreign.sqlite"
    with contextlib.closing(sqlite3.connect(foreign)) as db:
        db.execute("CREATE TABLE users (name TEXT)")
    (tmp_path / "text.sqlite").write_text("not a database, just text\n" * 100)
    cases = {
        tmp_path / "plain-file" / "outbox.sqlite": "cannot create its folder",
        foreign: "is an SQLite file of another program (table 'users'",
        tmp_path / "text.sqlite": "cannot be used: file is not a database",
        tmp_path: "exists and is not a file",
    }
    for path, cause in cases.items():
        result = run_with_outbox(1, tmp_path, path)
        assert result.returncode == 2, result.stderr
        assert f"outbox {path}" in result.stderr and cause in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


def test_a_second_daemon_on_the_same_outbox_is_refused_and_the_file_is_private(tmp_path):
    from edge.outbox import Outbox

    path = tmp_path / "outbox.sqlite"
    first = Outbox(path)  # this test process plays the first daemon
    try:
        second = run_with_outbox(1, tmp_path, path)
    finally:
        first.close()
    assert second.returncode == 2
    assert f"outbox {path} is in use by another edge process (pid {os.getpid()})" in second.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "outbox.sqlite.lock").stat().st_mode) == 0o600
    Outbox(path).close()  # released: the next daemon gets it


@pytest.fixture
def small_disk(tmp_path):
    """A real 8 MiB tmpfs (needs root and mount); the test is skipped where it cannot be mounted."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=True)


def fill(folder) -> None:
    """Write a filler file until the disk is full (bounded by the disk's 8 MiB size)."""
    with open(folder / "filler", "wb", buffering=0) as f:
        for _ in range(4096):
            try:
                f.write(b"\0" * 4096)
                os.fsync(f.fileno())
            except OSError:
                return
    raise AssertionError("the disk never filled up")


def event(i: int):
    from edge.events import CoughEvent, ModelRef

    return CoughEvent(event_id=str(uuid.uuid4()), device_id="test", onset_utc="2026-01-01T00:00:00.000Z",
                      clock_synced=True, onset_sample=i, sample_rate=16000, duration_s=0.3, label="negative",
                      probabilities={"positive": 0.1, "negative": 0.9}, threshold=0.5, cough_score=0.9,
                      model=ModelRef("m", "0" * 64), detector=ModelRef("d", "0" * 64), latency_ms=1.0)


def wait_until(condition, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_a_full_disk_loses_nothing_and_storage_recovers(small_disk, tmp_path):
    from edge.mqtt import MqttSettings, MqttSink
    from edge.outbox import Outbox

    b = make_broker(tmp_path)  # not started yet: the events must wait
    sink = MqttSink(MqttSettings(host="127.0.0.1", port=b.port), "test", Outbox(small_disk / "outbox.sqlite"))
    try:
        fill(small_disk)
        events = [event(i) for i in range(40)]
        for e in events:
            sink.submit(e)  # never raises
        health = sink.health()
        assert health["outbox_write_errors"] == 40 and health["outbox_unstored"] == 40
        assert "database or disk is full" in health["outbox_error"]
        (small_disk / "filler").unlink()  # space returns
        assert wait_until(lambda: sink.health()["outbox_unstored"] == 0)
        assert sink.depth() == 40 and sink.health()["outbox_error"] is None
        b.start()
        sub = Subscriber(b.port)
        got = {json.loads(p)["event_id"] for p in sub.wait_for("/event", 40)}
        sub.close()
        assert wait_until(lambda: sink.depth() == 0)
    finally:
        sink.close(timeout=1)
        b.stop()
    assert got == {e.event_id for e in events}


def immutable(paths, on: bool) -> None:
    """chattr +i: even root cannot write the file (chmod alone does not stop root)."""
    done = subprocess.run(["chattr", "+i" if on else "-i", *map(str, paths)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"chattr does not work here: {done.stderr.decode().strip()}")


def test_a_read_only_outbox_at_run_time_keeps_delivering_and_recovers(broker, tmp_path):
    from edge.mqtt import MqttSettings, MqttSink
    from edge.outbox import Outbox

    path = tmp_path / "outbox.sqlite"
    sub = Subscriber(broker.port)
    sink = MqttSink(MqttSettings(host="127.0.0.1", port=broker.port), "test", Outbox(path))
    files = [path, tmp_path / "outbox.sqlite-wal"]
    immutable(files, True)
    try:
        events = [event(i) for i in range(5)]
        for e in events:
            sink.submit(e)  # never raises
        assert sink.health()["outbox_write_errors"] == 5 and sink.health()["outbox_error"]
        got = {json.loads(p)["event_id"] for p in sub.wait_for("/event", 5)}  # published from memory meanwhile
    finally:
        immutable(files, False)
    try:
        assert wait_until(lambda: sink.health()["outbox_unstored"] == 0 and sink.depth() == 0)
    finally:
        sink.close(timeout=1)
        sub.close()
    assert got == {e.event_id for e in events}
