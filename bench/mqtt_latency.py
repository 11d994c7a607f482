"""Latency from the end of a cough window to the broker's PUBACK, through a real mosquitto on loopback.

    python bench/mqtt_latency.py [recording.flac]   # e.g. the stream of `trainer stream --audio F`

Runs the daemon's own pipeline and MQTT sink in-process, feeding the recording in 100 ms chunks
paced at 10x real time, and reports per event: processing latency (window complete -> event ready,
the event's ``latency_ms``) plus outbox write -> PUBACK.
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge.audio import FileSource  # noqa: E402
from edge.inference import Model  # noqa: E402
from edge.mqtt import MqttSettings, MqttSink  # noqa: E402
from edge.outbox import Outbox  # noqa: E402
from edge.pipeline import Pipeline  # noqa: E402
from edge.shipped import CHECKOUT, model_path  # noqa: E402
from mosquitto import make_broker  # noqa: E402


class TimedOutbox(Outbox):
    """The real outbox, noting when each event is deleted (that happens on its PUBACK)."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.acked: dict[str, float] = {}

    def remove(self, event_id: str) -> None:
        self.acked[event_id] = time.perf_counter()
        super().remove(event_id)


def main() -> int:
    recording = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "tests/data/demo.flac"
    detector = Model(model_path(CHECKOUT, "detector"))
    classifier = Model(model_path(CHECKOUT, "classifier"))
    with tempfile.TemporaryDirectory() as tmp:
        broker = make_broker(Path(tmp))
        broker.start()
        try:
            outbox = TimedOutbox(Path(tmp) / "outbox.sqlite")
            sink = MqttSink(MqttSettings(host="127.0.0.1", port=broker.port), "bench", outbox)
            if not sink.connected.wait(10):
                raise RuntimeError("could not connect to mosquitto")
            submitted: dict[str, tuple[float, float]] = {}

            def send(events) -> None:
                for event in events:
                    submitted[event.event_id] = (time.perf_counter(), event.latency_ms)
                    sink.submit(event)

            pipeline = Pipeline(detector, classifier, "bench")
            source = FileSource(recording, pipeline.sample_rate, block_s=0.1)
            while (chunk := source.read()) is not None:
                send(pipeline.feed(chunk))
                time.sleep(0.01)
            send(pipeline.flush())
            deadline = time.monotonic() + 10
            while len(outbox.acked) < len(submitted) and time.monotonic() < deadline:
                time.sleep(0.01)
            sink.close(timeout=2)
        finally:
            broker.stop()
    total = np.array([proc + (outbox.acked[i] - t) * 1000 for i, (t, proc) in submitted.items() if i in outbox.acked])
    proc = np.array([p for _, p in submitted.values()])
    print(f"{recording.name}: {len(submitted)} events, {len(total)} acknowledged")
    print(f"window complete -> event ready: median {np.median(proc):.1f} ms, p95 {np.percentile(proc, 95):.1f} ms")
    print(f"window complete -> PUBACK:      median {np.median(total):.1f} ms, p95 {np.percentile(total, 95):.1f} ms, "
          f"max {total.max():.1f} ms")
    return 0 if len(total) == len(submitted) else 1


if __name__ == "__main__":
    sys.exit(main())
