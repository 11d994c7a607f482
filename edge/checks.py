"""`edge check`: each part of the setup, with a plain statement of what is wrong."""
from __future__ import annotations

import threading
import uuid

from .settings import EdgeSettings


def _check_models(s: EdgeSettings) -> list[str]:
    from .inference import Model, check_rates

    out, models = [], []
    for role, path in (("detector", s.model.detector), ("classifier", s.model.classifier)):
        m = Model(path, s.model.threads)  # includes a test inference on silence and noise
        models.append(m)
        out.append(f"{role}: {m.info.name} labels={list(m.info.labels)} threshold={m.info.threshold:.3f} "
                   f"{m.info.sample_rate} Hz, {m.info.window_samples} samples, sha256={m.sha256[:12]}, "
                   "test inference ok")
    check_rates(*models)
    from .verifier import Verifier, check_usable, resolve

    chosen = resolve(s.model.verifier, models[0].info, scanning=s.onset.scan_ms > 0)
    if chosen.folder is None:
        out.append(chosen.why)
        return out
    v = Verifier(chosen.folder, s.model.threads)  # includes a test inference on silence and noise
    check_usable(v, models[0].info, scanning=s.onset.scan_ms > 0, threshold_given=s.model.detector_threshold >= 0)
    out.append(f"{chosen.why}: {v.spec.tagger} mixed in at {v.spec.mix:g}, threshold {v.spec.threshold:.3f}, "
               f"tagger sha256={v.spec.tagger_sha256[:12]}, test inference ok")
    return out


def _check_mic(s: EdgeSettings) -> list[str]:
    import numpy as np

    from .audio import SILENT_PEAK, MicSource
    from .inference import Model

    mic = MicSource(s.mic, Model(s.model.detector, s.model.threads).info.sample_rate)  # the models' rate
    if mic.last_error:
        raise RuntimeError(f"the microphone cannot be opened: {mic.last_error}")
    try:
        got = [mic.read(timeout=1.0) for _ in range(10)]
    finally:
        mic.close()
    audio = np.concatenate([g for g in got if g is not None and g.size] or [np.zeros(0, np.float32)])
    if audio.size == 0:
        raise RuntimeError("the microphone opened but delivered no audio in 1 s")
    peak = float(np.abs(audio).max())
    note = " (digital silence: muted or wrong input?)" if peak < SILENT_PEAK else ""
    return [f"microphone at {mic.native_rate} Hz: {audio.size} samples, peak {peak:.4f}{note}"]


PROBE_WAIT_S = 10.0
"""How long `edge check` waits for each broker step (connect, subscribe, PUBACK, delivery), in seconds."""


class _Probe:
    """Connects, subscribes to the device's check topic, publishes a probe there and waits for it to come back."""

    def __init__(self, s: EdgeSettings) -> None:
        from .mqtt import guarded, make_client

        self.where = f"broker {s.mqtt.host}:{s.mqtt.port}"
        self.topic = f"{s.mqtt.topic_prefix}/{s.device.id}/check"
        self.nonce = uuid.uuid4().hex.encode()
        self.results: dict = {}
        self.steps = {name: threading.Event() for name in ("connect", "subscribe", "publish", "message")}
        self.client = make_client(s.mqtt, f"coughwatch-check-{s.device.id}")
        self.client.on_connect = guarded(lambda c, u, f, rc, p: self._done("connect", rc))
        self.client.on_subscribe = guarded(lambda c, u, mid, rcs, p: self._done("subscribe", rcs[0]))
        self.client.on_publish = guarded(lambda c, u, mid, rc, p: self._done("publish", rc))
        self.client.on_message = guarded(lambda c, u, m: m.payload == self.nonce and self._done("message", m))

    def _done(self, step: str, value) -> None:
        self.results[step] = value
        self.steps[step].set()

    def _wait(self, step: str, failure: str):
        if not self.steps[step].wait(PROBE_WAIT_S):
            raise RuntimeError(f"{self.where}: {failure} within {PROBE_WAIT_S:.0f} s")
        return self.results[step]

    def run(self, s: EdgeSettings) -> None:
        from .mqtt import connect_properties, describe_error

        try:
            self.client.connect(s.mqtt.host, s.mqtt.port, keepalive=s.mqtt.keepalive_s, clean_start=True,
                                properties=connect_properties())
        except OSError as exc:
            raise RuntimeError(f"cannot reach {self.where}: {describe_error(exc, s.mqtt.tls)}") from exc
        self.client.loop_start()
        try:
            self._steps()
        finally:
            self.client.disconnect()
            self.client.loop_stop()

    def _steps(self) -> None:
        rc = self._wait("connect", "did not answer")
        if rc.is_failure:
            raise RuntimeError(f"{self.where} refused us: {rc} (check mqtt.username/password)")
        self.client.subscribe(self.topic, qos=1)
        rc = self._wait("subscribe", f"did not confirm the subscription to {self.topic}")
        if rc.is_failure:
            raise RuntimeError(f"{self.where} refused the subscription to {self.topic}: {rc}")
        self.client.publish(self.topic, self.nonce, qos=1)
        rc = self._wait("publish", f"did not acknowledge the probe on {self.topic}")
        if rc.is_failure:
            raise RuntimeError(f"{self.where} refused the probe on {self.topic}: {rc} (does its ACL let this "
                               f"client write {self.topic.rsplit('/', 1)[0]}/#?)")
        self._wait("message", f"accepted the probe on {self.topic} but did not deliver it back (does its ACL "
                   "let this client read the device's topics?)")


def _check_broker(s: EdgeSettings) -> list[str]:
    if not s.mqtt.host:
        return ["no broker configured (mqtt.host empty): events will be printed on stdout"]
    probe = _Probe(s)
    probe.run(s)
    return [f"{probe.where}: connected{' with TLS' if s.mqtt.tls else ''}, a probe on {probe.topic} "
            "was accepted and delivered back"]


def run_checks(s: EdgeSettings, *, check_mic: bool = True) -> int:
    checks = [("models", _check_models), ("broker", _check_broker)] + ([("microphone", _check_mic)] if check_mic else [])
    failed = 0
    for name, fn in checks:
        try:
            for line in fn(s):
                print(f"ok    {name}: {line}")
        except Exception as exc:  # noqa: BLE001 - every failure is reported, then the next check runs
            failed += 1
            print(f"FAIL  {name}: {exc}")
    return 1 if failed else 0
