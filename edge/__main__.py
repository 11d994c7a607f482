"""`edge`: run, listen, check, devices. The composition root: parse, validate, fail fast, wire, run."""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import threading
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

from . import broker, config, logs
from .audio import AudioError, FileSource, MicSource, StdinSource
from .contract import ContractError
from .outbox import OutboxError
from .settings import DEFAULT_CONFIG, EdgeSettings

log = logging.getLogger("edge")


SECTIONS = {"run": None, "listen": [f"mqtt.{key}" for key in (*broker.BROKER_KEYS, "ca_file", "topic_prefix",
                                                                 "keepalive_s", "reconnect_max_s")],
            "check": ["device", "mic", "model", "mqtt"]}
"""The settings each subcommand reads, so each shows only its own flags (None = every section)."""


def _settings(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> EdgeSettings:
    """Defaults < config file < COUGHWATCH_<SECTION>_<KEY> < flags; the MQTT password read (edge.broker)."""
    file = args.config or DEFAULT_CONFIG
    s = config.build(EdgeSettings, file=file, args=args, env_prefix="COUGHWATCH", environ=environ,
                     file_required=args.config is not None)
    return dataclasses.replace(s, mqtt=broker.with_password(s.mqtt))


def _source(args: argparse.Namespace, s: EdgeSettings, rate: int):
    if args.source == "-":
        return StdinSource(args.stdin_rate, rate)
    if args.source:
        return FileSource(args.source, rate, realtime=not args.fast)
    return MicSource(s.mic, rate)


def cmd_run(args: argparse.Namespace) -> int:
    from .daemon import Daemon, stop_on_signals
    from .discovery import DeviceInfo, software_version
    from .inference import Model, check_rates
    from .mqtt import MqttSink, StdoutSink
    from .onset import OnsetDetector
    from .outbox import Outbox
    from .pipeline import Pipeline
    from .sdnotify import Notifier
    from .verifier import Verifier, resolve

    s = _settings(args)
    stop = stop_on_signals()
    detector = Model(s.model.detector, s.model.threads)
    classifier = Model(s.model.classifier, s.model.threads)
    check_rates(detector, classifier)
    if detector.info.positive_label != "cough":
        log.warning("detector %s has positive label %r, not 'cough'", detector.info.name, detector.info.positive_label)
    rate = classifier.info.sample_rate
    source = _source(args, s, rate)
    info = DeviceInfo(software_version(), detector.info.name, classifier.info.name)
    sink = MqttSink(s.mqtt, s.device.id, Outbox(s.device.outbox, s.device.outbox_max_events), info=info,
                    keep_days=s.device.counts_days) if s.mqtt.host else StdoutSink()

    chosen = resolve(s.model.verifier, detector.info, scanning=s.onset.scan_ms > 0)
    verifier = Verifier(chosen.folder, s.model.threads) if chosen.folder else None
    pipeline = Pipeline(detector, classifier, s.device.id, onset=OnsetDetector(rate, s.onset),
                        detector_threshold=None if s.model.detector_threshold < 0 else s.model.detector_threshold,
                        verifier=verifier)
    daemon = Daemon(source, pipeline, sink, Notifier(), stats_interval_s=s.mqtt.stats_interval_s,
                    silence_s=s.device.silence_s, shutdown_flush_s=s.device.shutdown_flush_s, stop=stop)
    log.info("device %s: detector %s, classifier %s (%s), results to %s", s.device.id, detector.info.name,
             classifier.info.name, classifier.sha256[:12], f"mqtt://{s.mqtt.host}:{s.mqtt.port}" if s.mqtt.host
             else "stdout")
    if verifier is None:
        log.log(logging.WARNING if chosen.set_aside else logging.INFO, "%s", chosen.why)
    else:
        log.info("%s: %s mixed in at %.2f, threshold %.2f", chosen.why, verifier.spec.tagger, verifier.spec.mix,
                 pipeline.detector_threshold)
    log.info("results are research screening signals, not a diagnosis")
    return daemon.run()


SESSION_EXPIRY_S = 0xFFFFFFFF
"""MQTT v5 session expiry of `edge listen --session`: the broker keeps the session (never expires)."""


def parse_event(payload: bytes) -> tuple[str, str]:
    """``(event_id, text)`` of an event message; ValueError saying what is wrong with a malformed one."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        event = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(event, dict):
        raise ValueError(f"not a JSON object but {type(event).__name__}")
    event_id = event.get("event_id")
    if not isinstance(event_id, str) or not event_id:
        raise ValueError(f"event_id is {event_id!r}, not a non-empty string")
    return event_id, text


class Listener:
    """Prints each event once (de-duplicated by event_id); skips and reports malformed messages."""

    def __init__(self, count: int) -> None:
        self.count, self.printed, self.malformed = count, 0, 0
        self.seen: OrderedDict[str, None] = OrderedDict()
        self.done = threading.Event()

    def on_message(self, client, userdata, msg) -> None:
        if msg.topic.endswith("/event"):
            self._event(msg.topic, msg.payload)
            return
        if msg.topic.endswith("/counts"):
            self._counts(msg.topic, msg.payload)
            return
        try:
            payload = msg.payload.decode("utf-8")
        except UnicodeDecodeError:
            self._skip(msg.topic, "payload is not UTF-8")
            return
        print(json.dumps({"topic": msg.topic, "payload": payload, "retained": bool(msg.retain)}), flush=True)

    def _event(self, topic: str, payload: bytes) -> None:
        try:
            event_id, text = parse_event(payload)
        except ValueError as exc:
            self._skip(topic, str(exc))
            return
        if event_id in self.seen:
            return
        self.seen[event_id] = None
        if len(self.seen) > 100000:
            self.seen.popitem(last=False)
        print(text, flush=True)
        self.printed += 1
        if self.count and self.printed >= self.count:
            self.done.set()

    def _counts(self, topic: str, payload: bytes) -> None:
        """A rolling-counts message (edge/counts.schema.json) as one JSON line: ``{"topic": ..., "counts": {...}}``."""
        try:
            counts = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            self._skip(topic, f"counts are not UTF-8 JSON ({exc})")
            return
        if not isinstance(counts, dict) or not isinstance(counts.get("schema"), int):
            self._skip(topic, "counts are not a JSON object with a schema version")
            return
        print(json.dumps({"topic": topic, "counts": counts}, sort_keys=True), flush=True)

    def _skip(self, topic: str, why: str) -> None:
        self.malformed += 1
        log.warning("skipped a malformed message on %s: %s (%d skipped so far)", topic, why, self.malformed)


def listen_topics(prefix: str, device: str, *, every: bool, counts: bool) -> list[str]:
    """The topics `edge listen` subscribes to: events; with --all status, stats and counts; with --counts counts."""
    names = ["event", *(["status", "stats"] if every else []), *(["counts"] if every or counts else [])]
    return [f"{prefix}/{device}/{name}" for name in names]


def cmd_listen(args: argparse.Namespace) -> int:
    """Subscribe and print each event once (de-duplicated by event_id) as a JSON line."""
    from .mqtt import connect_properties, guarded, make_client

    s = _settings(args)
    if not s.mqtt.host:
        raise config.ConfigError("mqtt.host is empty: `edge listen` needs a broker (--mqtt-host)")
    # A named session is persistent: the broker queues events for it while this subscriber is away.
    client_id = f"coughwatch-listen-{args.session}" if args.session else f"coughwatch-listen-{os.getpid()}"
    client = make_client(s.mqtt, client_id)
    listener = Listener(args.count)
    topics = listen_topics(s.mqtt.topic_prefix, args.device_filter or "+", every=args.all, counts=args.counts)

    def on_connect(c, userdata, flags, rc, props):
        if rc.is_failure:
            print(f"edge listen: broker refused the connection: {rc}", file=sys.stderr)
            listener.done.set()
            return
        for t in topics:
            c.subscribe(t, qos=1)

    client.on_connect, client.on_message = guarded(on_connect), guarded(listener.on_message)
    client.connect_async(s.mqtt.host, s.mqtt.port, keepalive=s.mqtt.keepalive_s, clean_start=not args.session,
                         properties=connect_properties(SESSION_EXPIRY_S if args.session else 0))
    client.loop_start()
    try:
        listener.done.wait(args.timeout if args.timeout > 0 else None)
    except KeyboardInterrupt:
        pass
    client.disconnect()
    client.loop_stop()
    return 0 if not args.count or listener.printed >= args.count else 1


def cmd_check(args: argparse.Namespace) -> int:
    from .checks import run_checks

    return run_checks(_settings(args), check_mic=not args.skip_mic)


def cmd_devices(args: argparse.Namespace) -> int:
    import sounddevice as sd

    inputs = [(i, d) for i, d in enumerate(sd.query_devices()) if d["max_input_channels"] > 0]
    if not inputs:
        print("edge devices: no input device found (is a microphone connected? `arecord -l` lists what ALSA sees)",
              file=sys.stderr)
        return 1
    for i, d in inputs:
        print(f"{i:3d}  {d['name']}  ({d['max_input_channels']} ch, {d['default_samplerate']:.0f} Hz)")
    return 0


def _sample_rate(text: str) -> int:
    try:
        rate = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of Hz") from None
    if not 1000 <= rate <= 384000:
        raise argparse.ArgumentTypeError(f"{rate} Hz is outside 1000..384000 Hz")
    return rate


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge", description="coughwatch edge daemon (research screening, not diagnosis)",
                                     allow_abbrev=False)  # --mqtt-password must not pass for --mqtt-password-file
    logs.add_arguments(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_ in (("run", "listen and publish one event per cough"), ("listen", "print events from the broker"),
                        ("check", "verify microphone, models and broker"), ("devices", "list input devices")):
        p = sub.add_parser(name, help=help_, allow_abbrev=False)
        if name == "devices":
            continue
        p.add_argument("--config", type=Path, default=None, help=f"TOML config (default {DEFAULT_CONFIG} if present)")
        config.add_arguments(p, EdgeSettings, only=SECTIONS[name])
        if name == "run":
            p.add_argument("--source", default="", help="WAV/FLAC file to replay, or - for raw s16le PCM on stdin")
            p.add_argument("--fast", action="store_true", help="replay the file as fast as possible")
            p.add_argument("--stdin-rate", type=_sample_rate, default=16000,
                           help="sample rate of PCM on stdin, in Hz (1000..384000)")
        if name == "listen":
            p.add_argument("--device-filter", default="", help="only this device id (default: all)")
            p.add_argument("--count", type=int, default=0, help="exit after this many events")
            p.add_argument("--timeout", type=float, default=0, help="exit after this many seconds (0 = never)")
            p.add_argument("--all", action="store_true", help="also print status, stats and counts messages")
            p.add_argument("--counts", action="store_true",
                           help="also print the rolling cough counts (retained: the latest at once)")
            p.add_argument("--session", default="", help="persistent session name: miss nothing while away")
        if name == "check":
            p.add_argument("--skip-mic", action="store_true", help="do not open the microphone")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(args.log_level)
    handlers = {"run": cmd_run, "listen": cmd_listen, "check": cmd_check, "devices": cmd_devices}
    try:
        return handlers[args.command](args)
    except (config.ConfigError, ContractError, AudioError, OutboxError) as exc:
        print(f"edge {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
