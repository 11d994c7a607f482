"""One vocabulary: the broker flags and the password parse the same way in `edge`, `deploy sdcard` and install.sh;
each `edge` subcommand shows only its own flags; one verbosity flag in every program."""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT
from test_install_sh import fake_venv, install, load_config

BROKER = ["--mqtt-host", "127.0.0.1", "--mqtt-port", "8884", "--mqtt-tls", "--mqtt-username", "pi"]


def edge_broker(argv: list[str], environ: dict[str, str], tmp_path):
    from edge.__main__ import _settings, build_parser

    args = build_parser().parse_args(["check", "--config", str(tmp_path / "none.toml"), *argv])
    (tmp_path / "none.toml").write_text("")
    return _settings(args, environ).mqtt


def deploy_broker(argv: list[str], environ: dict[str, str], tmp_path):
    from deploy.cli import build_parser, card_settings

    args = build_parser().parse_args(["sdcard", "--boot", str(tmp_path), "--device-id", "kitchen", *argv])
    return card_settings(args, environ).mqtt


def install_sh_broker(argv: list[str], environ: dict[str, str], tmp_path):
    from edge.broker import PASSWORD_ENV

    root = tmp_path / "root"
    fake_venv(root)
    result = subprocess.run(["bash", str(ROOT / "deploy/install.sh"), "--root", str(root), "--device-id", "kitchen",
                             *argv], capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
                            env={"PATH": "/usr/bin:/bin", **environ})
    assert result.returncode == 0, result.stdout + result.stderr
    s = load_config(root / "etc/coughwatch/edge.toml").mqtt
    secrets = root / "etc/coughwatch/secrets.env"
    password = secrets.read_text().removeprefix(f"{PASSWORD_ENV}=").rstrip("\n") if secrets.exists() else ""
    return s.__class__(host=s.host, port=s.port, tls=s.tls, username=s.username, password=password)


PROGRAMS = {"edge": edge_broker, "deploy": deploy_broker, "install.sh": install_sh_broker}


@pytest.mark.parametrize("program", PROGRAMS)
def test_broker_and_password_file_parse_the_same_way(program, tmp_path):
    (tmp_path / "mqtt.pw").write_text("s3cret word\nsecond line ignored\n")
    s = PROGRAMS[program]([*BROKER, "--mqtt-password-file", str(tmp_path / "mqtt.pw")], {}, tmp_path)
    assert (s.host, s.port, s.tls, s.username, s.password) == ("127.0.0.1", 8884, True, "pi", "s3cret word")


@pytest.mark.parametrize("program", PROGRAMS)
def test_password_from_the_environment(program, tmp_path):
    s = PROGRAMS[program](BROKER, {"COUGHWATCH_MQTT_PASSWORD": "from-env"}, tmp_path)
    assert (s.host, s.username, s.password) == ("127.0.0.1", "pi", "from-env")


@pytest.mark.parametrize("program", ["edge", "deploy"])
def test_a_password_given_twice_is_refused(program, tmp_path):
    from deploy.sdcard import DeployError
    from edge.config import ConfigError

    (tmp_path / "mqtt.pw").write_text("one\n")
    with pytest.raises((ConfigError, DeployError), match="given twice"):
        PROGRAMS[program]([*BROKER, "--mqtt-password-file", str(tmp_path / "mqtt.pw")],
                          {"COUGHWATCH_MQTT_PASSWORD": "two"}, tmp_path)


@pytest.mark.parametrize("argv", [
    [sys.executable, "-m", "edge", "run", "--help"],
    [sys.executable, "-m", "edge", "listen", "--help"],
    [sys.executable, "-m", "edge", "check", "--help"],
    [sys.executable, "-m", "deploy", "sdcard", "--help"],
    [sys.executable, "-m", "edge.install_config", "--help"],
])
def test_every_program_takes_the_same_broker_flags_and_no_password_flag(argv):
    text = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=60).stdout
    for flag in ("--mqtt-host", "--mqtt-port", "--mqtt-tls", "--mqtt-username", "--mqtt-password-file"):
        assert flag in text, flag
    assert "--mqtt-password " not in text and "--broker" not in text


@pytest.mark.parametrize("argv", [
    [sys.executable, "-m", "edge", "run", "--fast"],
    [sys.executable, "-m", "edge", "listen"],
    [sys.executable, "-m", "deploy", "sdcard", "--device-id", "k"],
    [sys.executable, "-m", "edge.install_config", "--out", "never-written.toml"],
])
def test_a_password_flag_is_refused_not_taken_for_the_password_file(argv):
    result = subprocess.run([*argv, "--mqtt-password", "hunter2"], capture_output=True, text=True, cwd=ROOT,
                            timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 2 and "unrecognized arguments: --mqtt-password hunter2" in result.stderr


def test_install_sh_takes_no_password_flag(tmp_path):
    result = install(tmp_path, "--mqtt-password", "s3cret", check=False)
    assert result.returncode == 2 and "unknown argument: --mqtt-password" in result.stderr


def test_each_edge_subcommand_shows_only_its_own_flags():
    def flags(command: str) -> str:
        return subprocess.run([sys.executable, "-m", "edge", command, "--help"], capture_output=True, text=True,
                              cwd=ROOT, timeout=60).stdout

    run, listen, check = flags("run"), flags("listen"), flags("check")
    assert "--onset-on-db" in run and "--mic-device" in run and "--model-detector" in run
    assert "--onset-on-db" not in listen and "--mic-device" not in listen and "--model-detector" not in listen
    assert "--device-id" not in listen and "--mqtt-discovery" not in listen and "--mqtt-topic-prefix" in listen
    assert "--onset-on-db" not in check and "--model-detector" in check and "--mic-device" in check


@pytest.mark.parametrize("program", ["edge", "trainer", "deploy"])
def test_one_verbosity_flag(program):
    text = subprocess.run([sys.executable, "-m", program, "--help"], capture_output=True, text=True, cwd=ROOT,
                          timeout=120).stdout
    assert "--log-level" in text and "--verbose" not in text


def test_a_runs_settings_json_is_a_config_file(tmp_path):
    import json

    from edge import config
    from trainer.settings import Settings

    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"command": "trainer distill ...", "data": {"manifest": "m.csv", "label_map": "a=b"},
                                "run": {"seed": 3}}))
    s = config.build(Settings, file=path)
    assert (s.data.manifest, s.data.label_map, s.run.seed) == ("m.csv", "a=b", 3)
    path.write_text("[1, 2]")
    with pytest.raises(config.ConfigError, match="not a JSON object"):
        config.build(Settings, file=path)


def test_the_trainer_hears_a_file_as_the_daemon_does(tmp_path):
    """One file decoder: `trainer`'s audio is `edge.audio.read_file`'s, which is what `edge run --source` hears;
    a container libsndfile cannot open goes through the same downmix and resampler."""
    import numpy as np
    import soundfile as sf

    from edge.audio import CannotOpen, FileSource, read_file, to_mono_at
    from trainer.data import decode

    rng = np.random.default_rng(0)
    stereo = (0.1 * rng.standard_normal((8000 * 3, 2))).astype(np.float32)  # 3 s at 8 kHz, as a telephone
    path = tmp_path / "call.flac"
    sf.write(str(path), stereo, 8000, subtype="PCM_16")
    heard = decode(path, 16000)
    assert np.array_equal(heard, read_file(path, 16000)) and heard.dtype == np.float32
    source, streamed = FileSource(path, 16000, block_s=0.1), []
    while (chunk := source.read()) is not None:
        streamed.append(chunk)
    assert np.array_equal(heard, np.concatenate(streamed)), "block size does not change what is heard"
    frames, rate = sf.read(str(path), dtype="float32", always_2d=True)
    assert np.allclose(to_mono_at(frames, rate, 16000, "call"), heard, atol=1e-6)
    assert abs(heard.size - 3 * 16000) <= 1
    (tmp_path / "notes.flac").write_text("not audio")
    with pytest.raises(CannotOpen, match="notes.flac: cannot open audio file"):
        read_file(tmp_path / "notes.flac", 16000)
