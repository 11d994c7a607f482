"""The run loop: source -> pipeline -> sink, with signals, watchdog, heartbeat and clean shutdown."""
from __future__ import annotations

import logging
import os
import signal
import threading
import time

from .audio import SILENT_PEAK, AudioError, Source
from .mqtt import Sink
from .pipeline import Pipeline
from .sdnotify import Notifier

log = logging.getLogger(__name__)
STALL_S = 5.0
"""Seconds without any audio frame after which the stream is reported as stalled."""


def stop_on_signals() -> threading.Event:
    """An event that SIGTERM and SIGINT set from now on: install it before anything connects, so that a stop
    during start-up (after the broker has seen us online) still ends in a clean shutdown."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    return stop


class Daemon:
    def __init__(self, source: Source, pipeline: Pipeline, sink: Sink, notifier: Notifier, *, stats_interval_s: float,
                 silence_s: float, shutdown_flush_s: float, stop: threading.Event | None = None) -> None:
        self.source, self.pipeline, self.sink, self.notifier = source, pipeline, sink, notifier
        self.stats_interval_s, self.silence_s, self.shutdown_flush_s = stats_interval_s, silence_s, shutdown_flush_s
        self.stop = stop or threading.Event()
        """Set by SIGTERM/SIGINT (see :func:`stop_on_signals`) or by a caller: the run loop ends cleanly."""
        self._started = time.monotonic()
        self._last_audio = time.monotonic()
        self._last_sound = time.monotonic()

    def stats(self) -> dict:
        """The heartbeat: the pipeline's own health, the daemon's (uptime, CPU, stalls, silence) and the sink's."""
        cpu = os.times()
        now = time.monotonic()
        pipeline = self.pipeline.health()
        stalled = now - self._last_audio > STALL_S
        silent = now - self._last_sound > self.silence_s
        return {
            "uptime_s": round(now - self._started, 1), **pipeline, "cpu_s": round(cpu.user + cpu.system, 2),
            "overruns": self.source.overruns,
            "audio": "stalled" if stalled else "silent" if silent else pipeline["audio"],
            "outbox_depth": self.sink.depth(), "outbox_dropped": self.sink.dropped(),
            **self.sink.health(),
        }

    def _send(self, events: list) -> None:
        for event in events:
            self.sink.submit(event)  # durable first: an id that was logged is in the outbox
            log.info("event id=%s onset_utc=%s label=%s cough_score=%.3f", event.event_id, event.onset_utc,
                     event.label, event.cough_score)

    @staticmethod
    def _status_line(stats: dict) -> str:
        """The one-line systemd status: counts, audio health, and any delivery fault."""
        parts = [f"{stats['events']} events", f"audio {stats['audio']}", f"outbox {stats['outbox_depth']}"]
        if "mqtt" in stats:
            parts.append(f"mqtt {stats['mqtt']}" + (f" ({stats['mqtt_error']})" if stats.get("mqtt_error") else ""))
        if stats.get("publish_rejected"):
            parts.append(f"{stats['publish_rejected']} refused by the broker ({stats['last_rejection']})")
        if stats.get("outbox_unstored"):
            parts.append(f"{stats['outbox_unstored']} not stored ({stats['outbox_error']})")
        return ", ".join(parts)

    def run(self) -> int:
        """Until stopped or the input ends; a source that fails midway ends the run the same clean way (pending
        coughs classified, outbox flushed) and exits 1."""
        self.notifier.ready("listening")
        next_stats = time.monotonic()
        watchdog_every = self.notifier.watchdog_s / 2 if self.notifier.watchdog_s else 0
        next_watchdog = time.monotonic()
        code = 0
        while not self.stop.is_set():
            try:
                chunk = self.source.read(timeout=0.5)
            except AudioError as exc:
                log.error("input failed, stopping after flushing what was heard: %s", exc)
                code = 1
                break
            if chunk is None:
                log.info("end of input")
                break
            now = time.monotonic()
            if chunk.size:
                self._last_audio = now
                self._send(self.pipeline.feed(chunk))
                if self.pipeline.last_peak > SILENT_PEAK:
                    self._last_sound = now
            # The watchdog is fed only while audio keeps arriving: a stalled microphone gets us restarted.
            if watchdog_every and now >= next_watchdog and now - self._last_audio < watchdog_every:
                self.notifier.watchdog()
                next_watchdog = now + watchdog_every
            if now >= next_stats:
                stats = self.stats()
                if stats["audio"] != "ok":
                    log.warning("audio is %s (level %.1f dBFS, overruns %d)", stats["audio"], stats["level_dbfs"],
                                stats["overruns"])
                self.sink.publish_stats(stats)
                self.notifier.status(self._status_line(stats))
                next_stats = now + self.stats_interval_s
        self.notifier.stopping()
        self.source.close()
        self._send(self.pipeline.flush())
        self.sink.publish_stats(self.stats())
        self.sink.close(timeout=self.shutdown_flush_s)
        log.info("stopped: %s", self.stats())
        return code
