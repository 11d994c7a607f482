"""Fault test: broker stopped and restarted three times during a stream, the daemon SIGKILLed once and
restarted on the same outbox. Every event the daemon stored (its outbox file's record of coughs) must reach the
subscriber.

    trainer stream --config bench/stream.toml --audio /tmp/stream.flac   # the held-out benchmark stream
    python bench/fault.py /tmp/stream.flac

The stream goes to `edge run --source -` as s16le PCM at --speed times real time, so faults land
mid-stream. The subscriber is a raw paho client with a persistent session (the broker keeps its
queue across restarts, persistence on); it counts raw duplicates too, which QoS 1 permits and
`edge listen` removes.
"""
from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import paho.mqtt.client as mqtt
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from mosquitto import make_broker  # noqa: E402

FAULTS = {0.15: "broker-stop", 0.25: "broker-start", 0.40: "broker-stop", 0.50: "broker-start", 0.60: "daemon-kill",
          0.75: "broker-stop", 0.85: "broker-start"}
"""What happens when this share of the stream has been fed."""


class Subscriber:
    """A raw paho client with a persistent session: every event_id it receives, duplicates included."""

    def __init__(self, port: int) -> None:
        self.got: list[str] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id="fault-subscriber",
                                  clean_session=False)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe("coughwatch/+/event", qos=1)
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 2)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client, userdata, msg) -> None:
        with self._lock:
            self.got.append(json.loads(msg.payload)["event_id"])

    def received(self) -> list[str]:
        with self._lock:
            return list(self.got)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Daemon:
    """`edge run --source -` on one outbox, restartable; its stderr is drained so it never blocks."""

    def __init__(self, rate: int, port: int, outbox: Path) -> None:
        self.cmd = [sys.executable, "-m", "edge", "run", "--source", "-", "--stdin-rate", str(rate), "--device-id",
                    "fault", "--mqtt-host", "127.0.0.1", "--mqtt-port", str(port), "--mqtt-reconnect-max-s", "2",
                    "--device-outbox", str(outbox), "--device-shutdown-flush-s", "20"]
        self.readers: list[threading.Thread] = []
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(self.cmd, cwd=ROOT, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        reader = threading.Thread(target=self.proc.stderr.read, daemon=True)
        reader.start()
        self.readers.append(reader)

    def kill_and_restart(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.start()

    def feed(self, data: bytes) -> None:
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def finish(self) -> int:
        self.proc.stdin.close()
        rc = self.proc.wait(timeout=120)
        for t in self.readers:
            t.join(timeout=10)
        return rc


def feed_with_faults(pcm: bytes, rate: int, speed: float, daemon: Daemon, broker) -> None:
    """The stream in 100 ms pieces at ``speed`` times real time, each fault of FAULTS at its place."""
    step, done = int(rate * 0.1) * 2, set()  # 100 ms of s16le
    for pos in range(0, len(pcm), step):
        frac = pos / len(pcm)
        for at, what in FAULTS.items():
            if frac >= at and at not in done:
                done.add(at)
                print(f"{frac:5.0%} of the stream: {what}", flush=True)
                {"broker-stop": broker.stop, "broker-start": broker.start,
                 "daemon-kill": daemon.kill_and_restart}[what]()
        daemon.feed(pcm[pos: pos + step])
        time.sleep(0.1 / speed)


def stored_event_ids(outbox: Path) -> set[str]:
    """Every event the daemon stored durably: its id is kept with the cough's time in the outbox file's cough
    table, in the transaction that queued the event (edge.outbox), whether or not a PUBACK removed it since."""
    with sqlite3.connect(f"file:{outbox}?mode=ro", uri=True) as db:
        return {row[0] for row in db.execute("SELECT event_id FROM coughs")}


def report(rc: int, stored: set[str], got: list[str]) -> bool:
    counts = Counter(got)
    missing = stored - set(got)
    print(f"daemon exit code after the last run: {rc}")
    print(f"event ids stored by the daemon: {len(stored)}; received: {len(counts)}; missing: {len(missing)}; "
          f"received but never stored: {len(set(got) - stored)}")
    print(f"raw duplicates at the subscriber (QoS 1 redelivery; `edge listen` drops them): "
          f"{sum(c - 1 for c in counts.values())}")
    ok = not missing and rc == 0
    print("PASS" if ok else "FAIL")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stream", type=Path)
    ap.add_argument("--speed", type=float, default=20.0, help="feed at this multiple of real time")
    args = ap.parse_args()
    audio, rate = sf.read(str(args.stream), dtype="int16")
    tmp = Path(tempfile.mkdtemp())
    broker = make_broker(tmp, persistence=True)
    broker.start()
    sub = Subscriber(broker.port)
    time.sleep(1)
    daemon = Daemon(rate, broker.port, tmp / "outbox.sqlite")
    feed_with_faults(audio.tobytes(), rate, args.speed, daemon, broker)
    rc = daemon.finish()
    stored = stored_event_ids(tmp / "outbox.sqlite")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not stored <= set(sub.received()):
        time.sleep(0.1)
    sub.close()
    broker.stop()
    return 0 if report(rc, stored, sub.received()) else 1


if __name__ == "__main__":
    sys.exit(main())
