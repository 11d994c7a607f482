"""`edge check`: each part of the setup, with a plain statement of what is wrong."""
from __future__ import annotations

import threading

from .settings import EdgeSettings


def _check_models(s: EdgeSettings) -> list[str]:
    from .inference import Classifier

    out = []
    for role, path in (("detector", s.model.detector), ("classifier", s.model.classifier)):
        m = Classifier(path, s.model.threads)
        out.append(f"{role}: {m.info.name} labels={list(m.info.labels)} threshold={m.info.threshold:.3f} "
                   f"sha256={m.sha256[:12]}")
    return out


def _check_mic(s: EdgeSettings) -> list[str]:
    import numpy as np

    from .audio import MicSource

    mic = MicSource(s.mic, 16000)
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
    note = " (digital silence: muted or wrong input?)" if peak < 1e-4 else ""
    return [f"microphone at {mic.native_rate} Hz: {audio.size} samples, peak {peak:.4f}{note}"]


def _check_broker(s: EdgeSettings) -> list[str]:
    from .mqtt import make_client

    if not s.mqtt.host:
        return ["no broker configured (mqtt.host empty): events will be printed on stdout"]
    client = make_client(s.mqtt, f"coughwatch-check-{s.device.id}")
    result: dict = {}
    done = threading.Event()

    def on_connect(c, userdata, flags, rc, props):
        result["rc"] = rc
        done.set()

    client.on_connect = on_connect
    try:
        client.connect(s.mqtt.host, s.mqtt.port, keepalive=s.mqtt.keepalive_s)
    except OSError as exc:
        raise RuntimeError(f"cannot reach broker {s.mqtt.host}:{s.mqtt.port}: {exc}") from exc
    client.loop_start()
    done.wait(10)
    client.disconnect()
    client.loop_stop()
    rc = result.get("rc")
    if rc is None:
        raise RuntimeError(f"broker {s.mqtt.host}:{s.mqtt.port} did not answer within 10 s")
    if rc.is_failure:
        raise RuntimeError(f"broker {s.mqtt.host}:{s.mqtt.port} refused us: {rc} (check mqtt.username/password)")
    return [f"broker {s.mqtt.host}:{s.mqtt.port}: connected{' with TLS' if s.mqtt.tls else ''}"]


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
