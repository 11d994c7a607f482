"""Fault test: broker stopped and restarted three times during a stream, the daemon SIGKILLed once and
restarted on the same outbox. Every event id the daemon logged must reach the subscriber, none twice.

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
import re
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

EVENT_LOG = re.compile(r"event id=([0-9a-f-]{36})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stream", type=Path)
    ap.add_argument("--speed", type=float, default=20.0, help="feed at this multiple of real time")
    args = ap.parse_args()
    audio, rate = sf.read(str(args.stream), dtype="int16")
    pcm = audio.tobytes()
    tmp = Path(tempfile.mkdtemp())
    broker = make_broker(tmp, persistence=True)
    broker.start()
    got: list[str] = []
    lock = threading.Lock()
    sub = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id="fault-subscriber",
                      clean_session=False)
    sub.on_connect = lambda c, u, f, rc, p: c.subscribe("coughwatch/+/event", qos=1)

    def on_message(c, u, m):
        with lock:
            got.append(json.loads(m.payload)["event_id"])

    sub.on_message = on_message
    sub.reconnect_delay_set(1, 2)
    sub.connect("127.0.0.1", broker.port)
    sub.loop_start()
    time.sleep(1)
    logs: list[str] = []

    def start_daemon() -> subprocess.Popen:
        cmd = [sys.executable, "-m", "edge", "run", "--source", "-", "--stdin-rate", str(rate), "--device-id", "fault",
               "--mqtt-host", "127.0.0.1", "--mqtt-port", str(broker.port), "--mqtt-reconnect-max-s", "2",
               "--device-outbox", str(tmp / "outbox.sqlite"), "--device-shutdown-flush-s", "20"]
        return subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=False)

    def drain(proc: subprocess.Popen) -> threading.Thread:
        t = threading.Thread(target=lambda: logs.append(proc.stderr.read().decode()), daemon=True)
        t.start()
        return t

    daemon = start_daemon()
    readers = [drain(daemon)]
    step = int(rate * 0.1) * 2  # 100 ms of s16le
    faults = {0.15: "broker-stop", 0.25: "broker-start", 0.40: "broker-stop", 0.50: "broker-start",
              0.60: "daemon-kill", 0.75: "broker-stop", 0.85: "broker-start"}
    done_faults = set()
    for pos in range(0, len(pcm), step):
        frac = pos / len(pcm)
        for at, what in faults.items():
            if frac >= at and at not in done_faults:
                done_faults.add(at)
                print(f"{frac:5.0%} of the stream: {what}", flush=True)
                if what == "broker-stop":
                    broker.stop()
                elif what == "broker-start":
                    broker.start()
                else:
                    daemon.kill()
                    daemon.wait()
                    daemon = start_daemon()
                    readers.append(drain(daemon))
        daemon.stdin.write(pcm[pos: pos + step])
        daemon.stdin.flush()
        time.sleep(0.1 / args.speed)
    daemon.stdin.close()
    rc = daemon.wait(timeout=120)
    for t in readers:
        t.join(timeout=10)
    deadline = time.monotonic() + 20
    logged = {m for text in logs for m in EVENT_LOG.findall(text)}
    while time.monotonic() < deadline and not logged <= set(got):
        time.sleep(0.1)
    sub.disconnect()
    sub.loop_stop()
    broker.stop()
    counts = Counter(got)
    missing = logged - set(got)
    print(f"daemon exit code after the last run: {rc}")
    print(f"event ids logged by the daemon: {len(logged)}; received: {len(counts)}; missing: {len(missing)}; "
          f"received but never logged: {len(set(got) - logged)}")
    print(f"raw duplicates at the subscriber (QoS 1 redelivery; `edge listen` drops them): "
          f"{sum(c - 1 for c in counts.values())}")
    print("PASS" if not missing and rc == 0 else "FAIL")
    return 0 if not missing and rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
