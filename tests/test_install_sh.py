"""deploy/install.sh in a throwaway root: the files it writes, their modes, idempotence, uninstall, purge."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

SCRIPT = ROOT / "deploy" / "install.sh"


def install(root, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["bash", str(SCRIPT), "--root", str(root), *args], capture_output=True, text=True,
                            timeout=900)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def snapshot(root) -> dict[str, tuple[str, int]]:
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir",
                                       p.stat().st_mode & 0o7777)
            for p in sorted(root.rglob("*")) if not p.is_symlink() and "__pycache__" not in p.parts}


def test_shellcheck_clean():
    if shutil.which("shellcheck") is None:
        pytest.fail("shellcheck is not installed (apt-get install shellcheck)")
    result = subprocess.run(["shellcheck", str(SCRIPT), str(ROOT / "deploy" / "demo.sh"), str(ROOT / "tests" / "run.sh")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("args, message", [
    (["--broker", "mqtt://x"], "unknown argument: --broker"),
    (["--mqtt-password", "s3cret"], "unknown argument: --mqtt-password"),
    (["--purge"], "--purge only goes with --uninstall"),
    (["--frobnicate"], "unknown argument: --frobnicate"),
])
def test_bad_arguments_are_refused_with_a_reason(tmp_path, args, message):
    result = install(tmp_path, *args, check=False)
    assert result.returncode == 2 and message in result.stderr


@pytest.mark.slow
def test_install_is_idempotent_and_uninstall_keeps_config(tmp_path):
    root = tmp_path / "root"
    secrets = tmp_path / "mqtt.pw"
    secrets.write_text("s3cret\n")
    args = ["--mqtt-host", "broker.lan", "--mqtt-port", "8884", "--mqtt-tls", "--device-id", "kitchen",
            "--mqtt-username", "pi", "--mqtt-password-file", str(secrets)]
    install(root, *args)
    conf = (root / "etc/coughwatch/edge.toml").read_text()
    assert 'host = "broker.lan"' in conf and "port = 8884" in conf and "tls = true" in conf and 'id = "kitchen"' in conf
    assert "s3cret" not in conf
    assert (root / "etc/coughwatch/secrets.env").read_text() == "COUGHWATCH_MQTT_PASSWORD=s3cret\n"
    modes = {"etc/coughwatch/edge.toml": 0o640, "etc/coughwatch/secrets.env": 0o600,
             "etc/systemd/system/coughwatch-edge.service": 0o644,
             "etc/systemd/journald.conf.d/coughwatch.conf": 0o644,
             "var/lib/coughwatch/models/cough-detector/student.int8.onnx": 0o644,
             "var/lib/coughwatch/models/covid-screen/student.int8.onnx": 0o644,
             "var/lib/coughwatch/models/cough-verifier/verifier.json": 0o644,
             "var/lib/coughwatch/models/cough-verifier/yamnet.onnx": 0o644}
    for rel, mode in modes.items():
        assert (root / rel).stat().st_mode & 0o777 == mode, rel
    from edge.verifier import Verifier

    Verifier(root / "var/lib/coughwatch/models/cough-verifier")  # complete: it loads and runs
    assert "verifier" not in conf, "the default, verifier = auto, finds it where it was installed"
    assert (root / "etc/systemd/system/multi-user.target.wants/coughwatch-edge.service").is_symlink()
    assert (root / "opt/coughwatch/venv/bin/edge").is_file()
    assert "SystemMaxUse=50M" in (root / "etc/systemd/journald.conf.d/coughwatch.conf").read_text()
    before = snapshot(root)
    again = install(root, *args)
    assert "nothing to change" in again.stdout
    assert snapshot(root) == before
    install(root, "--uninstall")
    assert not (root / "opt/coughwatch").exists() and not (root / "etc/systemd/system/coughwatch-edge.service").exists()
    assert (root / "etc/coughwatch/edge.toml").is_file() and (root / "var/lib/coughwatch/models").is_dir()
    install(root, "--uninstall", "--purge")
    assert not (root / "etc/coughwatch").exists() and not (root / "var/lib/coughwatch").exists()


def fake_venv(root):
    """The venv install.sh would create, standing in for pip: wrappers around this interpreter and checkout."""
    bin_ = root / "opt/coughwatch/venv/bin"
    bin_.mkdir(parents=True)
    for name, module in (("python", ""), ("edge", "-m edge ")):
        (bin_ / name).write_text(f'#!/bin/sh\nPYTHONPATH="{ROOT}" exec "{sys.executable}" {module}"$@"\n')
        (bin_ / name).chmod(0o755)


def load_config(path):
    from edge import config
    from edge.settings import EdgeSettings

    return config.build(EdgeSettings, file=path, environ={})


def test_hostile_values_are_escaped_and_the_file_is_checked_by_the_daemons_loader(tmp_path):
    root = tmp_path / "root"
    fake_venv(root)
    username = 'p\\i "quoted" \u00e9'
    result = install(root, "--mqtt-host", "fd00::1", "--mqtt-port", "8884", "--mqtt-tls", "--device-id", "kitchen",
                     "--mqtt-username", username)
    assert "installed" in result.stdout
    s = load_config(root / "etc/coughwatch/edge.toml")
    assert (s.mqtt.username, s.mqtt.host, s.mqtt.port, s.mqtt.tls, s.device.id) == \
        (username, "fd00::1", 8884, True, "kitchen")
    install(root, "--mqtt-host", "fd00::2", "--no-mqtt-tls", "--mqtt-port", "1883", "--device-id", "kitchen")
    s = load_config(root / "etc/coughwatch/edge.toml")
    assert (s.mqtt.host, s.mqtt.port, s.mqtt.tls) == ("fd00::2", 1883, False)


@pytest.mark.parametrize("args, message", [
    (["--mqtt-host", "bro ker.lan"], "host = 'bro ker.lan' is not a valid host name or address"),
    (["--mqtt-host", "broker\n.lan"], "is not a valid host name or address"),
    (["--mqtt-host", "[fd00::1]"], "must be a host name or address without a port"),
    (["--mqtt-host", "broker.lan:1883"], "must be a host name or address without a port"),
    (["--mqtt-host", "broker.lan", "--mqtt-port", "99999"], "port = 99999 must be in 1..65535"),
    (["--mqtt-host", "broker.lan", "--mqtt-port", "x"], "mqtt.port = 'x' (from --mqtt-port): not a whole number"),
    (["--device-id", "kitchen sink"], "must be 1..64 ASCII letters, digits"),
])
def test_values_the_daemon_would_refuse_are_refused_before_installed_is_said(tmp_path, args, message):
    root = tmp_path / "root"
    fake_venv(root)
    result = install(root, "--device-id", "kitchen", *args, check=False)
    assert result.returncode == 2 and message in result.stderr, result.stdout + result.stderr
    assert "installed" not in result.stdout and not (root / "etc/coughwatch/edge.toml").exists()
    assert "Traceback" not in result.stderr


def test_a_dotted_host_name_becomes_its_first_label_as_device_id(tmp_path, monkeypatch):
    import socket

    from edge import config, install_config
    from edge.mqtt import MqttSettings

    monkeypatch.setattr(socket, "gethostname", lambda: "kitchen.example.lan")
    install_config.write(tmp_path / "edge.toml", "", MqttSettings(host="broker.lan"))
    assert load_config(tmp_path / "edge.toml").device.id == "kitchen"
    monkeypatch.setattr(socket, "gethostname", lambda: "pi+4.lan")
    with pytest.raises(config.ConfigError, match="id = 'pi\\+4' must be 1..64 ASCII letters"):
        install_config.write(tmp_path / "edge.toml", "", MqttSettings(host="broker.lan"))
    assert load_config(tmp_path / "edge.toml").device.id == "kitchen"  # the old file is left as it was


def test_a_plain_rerun_keeps_a_pushed_detector_and_its_retuned_verifier(tmp_path):
    """`deploy model push` replaces a model, and a verifier retuned for it is copied in by hand: re-running
    install.sh (without --upgrade) must leave both, or the verifier would fall back to the shipped one's threshold
    and `auto` would set it aside."""
    root = tmp_path / "root"
    fake_venv(root)
    install(root, "--device-id", "kitchen")
    models = root / "var/lib/coughwatch/models"
    pushed, retuned = models / "cough-detector/student.int8.onnx", models / "cough-verifier/verifier.json"
    pushed.write_bytes(b"pushed later")
    tuned = json.loads(retuned.read_text())
    retuned.write_text(json.dumps({**tuned, "threshold": round(tuned["threshold"] + 0.02, 2)}))
    kept = (pushed.read_bytes(), retuned.read_bytes())
    install(root, "--device-id", "kitchen")
    assert (pushed.read_bytes(), retuned.read_bytes()) == kept
    assert json.loads(kept[1])["threshold"] == round(tuned["threshold"] + 0.02, 2)
