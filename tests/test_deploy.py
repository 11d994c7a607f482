"""deploy sdcard against a disk image the test builds; first boot in a target root; model push with rollback."""
from __future__ import annotations

import os
import shutil
import stat
import struct
import subprocess
import sys

import pytest

from conftest import CLASSIFIER, DETECTOR, ROOT

CMDLINE = "console=serial0,115200 console=tty1 root=PARTUUID=abcd-02 rootfstype=ext4 fsck.repair=yes rootwait"
IMAGER_FIRSTRUN = """#!/bin/bash
set +e
CURRENT_HOSTNAME=`cat /etc/hostname | tr -d " \\t\\n\\r"`
rm -f /boot/firmware/firstrun.sh
sed -i 's| systemd.run.*||g' /boot/firmware/cmdline.txt
exit 0
"""


def deploy(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deploy", *args], capture_output=True, text=True, timeout=600,
                          cwd=ROOT, stdin=subprocess.DEVNULL, **kw)


def make_image(path, with_firstrun: bool = False):
    mkfs = shutil.which("mkfs.fat") or shutil.which("mkfs.fat", path="/usr/sbin:/sbin")
    if mkfs is None or shutil.which("mcopy") is None:
        pytest.fail("mkfs.fat and mcopy are needed (apt-get install dosfstools mtools)")
    start, sectors = 8192, 120 * 2048  # FAT partition at 4 MiB, 120 MiB long
    with open(path, "wb") as fh:
        fh.truncate((start + sectors) * 512)
        mbr = bytearray(512)
        mbr[446:462] = bytes([0, 0, 0, 0, 0x0C, 0, 0, 0]) + struct.pack("<II", start, sectors)
        mbr[510:512] = b"\x55\xaa"
        fh.seek(0)
        fh.write(mbr)
    subprocess.run([mkfs, "-F", "16", "--offset", str(start), str(path), str(sectors // 2)], check=True,
                   capture_output=True)
    spec = f"{path}@@{start * 512}"
    files = {"cmdline.txt": CMDLINE + "\n", "config.txt": "arm_64bit=1\n"}
    if with_firstrun:
        files["firstrun.sh"] = IMAGER_FIRSTRUN
    for name, text in files.items():
        src = path.parent / name
        src.write_text(text)
        subprocess.run(["mcopy", "-i", spec, str(src), f"::/{name}"], check=True, capture_output=True,
                       env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})
    return path


@pytest.fixture
def secrets(tmp_path):
    (tmp_path / "mqtt.pw").write_text("mqtt-s3cret\n")
    (tmp_path / "wifi.psk").write_text("correct horse battery\n")
    return ["--mqtt-password-file", str(tmp_path / "mqtt.pw"), "--wifi-psk-file", str(tmp_path / "wifi.psk")]


ARGS = ["--device-id", "kitchen", "--mqtt-host", "broker.lan", "--mqtt-port", "8883", "--mqtt-tls", "--mqtt-username",
        "pi", "--wifi-ssid", "home net", "--wifi-country", "DE"]


def test_sdcard_on_an_image_writes_every_file_and_hooks_firstrun(tmp_path, secrets):
    from deploy.sdcard import ImagePartition

    img = make_image(tmp_path / "pi.img")
    for _ in range(2):  # the second run must not add the hook twice
        result = deploy("sdcard", "--image", str(img), *ARGS, *secrets)
        assert result.returncode == 0, result.stderr
    part = ImagePartition(img)
    for name in ("coughwatch/deploy/install.sh", "coughwatch/deploy/firstboot.sh",
                 "coughwatch/systemd/coughwatch-edge.service", "coughwatch/models/cough-detector/student.int8.onnx",
                 "coughwatch/models/covid-screen/student.int8.onnx", "coughwatch/models/cough-verifier/verifier.json",
                 "coughwatch/models/cough-verifier/yamnet.onnx", "coughwatch/models/cough-verifier/MODEL_CARD.md"):
        assert part.read(name) == (ROOT / name.split("/", 1)[1]).read_bytes(), name
    settings = part.read("coughwatch/settings.env").decode()
    assert "DEVICE_ID=kitchen" in settings and "MQTT_HOST=broker.lan" in settings and "MQTT_PORT=8883" in settings
    assert "MQTT_TLS=true" in settings and "MQTT_USERNAME=pi" in settings
    assert "WIFI_SSID='home net'" in settings and "WIFI_COUNTRY=DE" in settings and "s3cret" not in settings
    assert part.read("coughwatch/secrets.env") == b"COUGHWATCH_MQTT_PASSWORD=mqtt-s3cret\n"
    assert part.read("coughwatch/wifi.psk") == b"correct horse battery"
    cmdline = part.read("cmdline.txt").decode()
    assert cmdline.startswith(CMDLINE) and cmdline.count("systemd.run=/boot/firmware/firstrun.sh") == 1
    firstrun = part.read("firstrun.sh").decode()
    assert firstrun.count("bash /boot/firmware/coughwatch/deploy/firstboot.sh stage1") == 1
    assert firstrun.index("firstboot.sh stage1") < firstrun.index("rm -f /boot/firmware/firstrun.sh")


def test_sdcard_chains_into_imager_firstrun_and_cloud_init(tmp_path, secrets):
    boot = tmp_path / "bootfs"
    boot.mkdir()
    (boot / "cmdline.txt").write_text(CMDLINE + " systemd.run=/boot/firmware/firstrun.sh\n")
    (boot / "config.txt").write_text("")
    (boot / "firstrun.sh").write_text(IMAGER_FIRSTRUN)
    assert deploy("sdcard", "--boot", str(boot), *ARGS, *secrets).returncode == 0
    lines = (boot / "firstrun.sh").read_text().splitlines()
    hook = lines.index("bash /boot/firmware/coughwatch/deploy/firstboot.sh stage1")
    assert lines[hook + 1] == "rm -f /boot/firmware/firstrun.sh" and "CURRENT_HOSTNAME" in lines[2]
    assert (boot / "cmdline.txt").read_text().count("systemd.run=") == 1
    cloud = tmp_path / "cloud"
    cloud.mkdir()
    (cloud / "cmdline.txt").write_text(CMDLINE + "\n")
    (cloud / "user-data").write_text("#cloud-config\nhostname: pi\nruncmd:\n  - [echo, hello]\n")
    assert deploy("sdcard", "--boot", str(cloud), *ARGS, *secrets).returncode == 0
    user_data = (cloud / "user-data").read_text().splitlines()
    assert user_data[3] == "  - [bash, /boot/firmware/coughwatch/deploy/firstboot.sh, stage1]"
    assert "  - [echo, hello]" in user_data and not (cloud / "firstrun.sh").exists()
    assert (cloud / "cmdline.txt").read_text().strip() == CMDLINE


def test_secrets_never_come_from_the_command_line(tmp_path):
    boot = tmp_path / "bootfs"
    boot.mkdir()
    (boot / "cmdline.txt").write_text(CMDLINE + "\n")
    help_text = deploy("sdcard", "--help").stdout
    assert "--mqtt-password-file" in help_text and "--mqtt-password " not in help_text
    result = deploy("sdcard", "--boot", str(boot), "--device-id", "k", "--mqtt-username", "pi")
    assert result.returncode == 2 and "MQTT password for pi is needed and stdin is not a terminal" in result.stderr
    assert deploy("sdcard", "--boot", str(boot), "--device-id", "a b").returncode == 2


@pytest.mark.slow
def test_first_boot_in_a_target_root(tmp_path, secrets):
    boot = tmp_path / "bootfs"
    boot.mkdir()
    (boot / "cmdline.txt").write_text(CMDLINE + "\n")
    assert deploy("sdcard", "--boot", str(boot), *ARGS, *secrets).returncode == 0
    target = tmp_path / "root"
    env = {**os.environ, "COUGHWATCH_TARGET": str(target)}
    stage1 = subprocess.run(["bash", str(boot / "coughwatch/deploy/firstboot.sh"), "stage1"], env=env,
                            capture_output=True, text=True)
    assert stage1.returncode == 0, stage1.stderr

    def mode(p):
        return stat.S_IMODE(p.stat().st_mode)

    secrets_env = target / "etc/coughwatch/secrets.env"
    assert secrets_env.read_text() == "COUGHWATCH_MQTT_PASSWORD=mqtt-s3cret\n" and mode(secrets_env) == 0o600
    wifi = target / "etc/NetworkManager/system-connections/coughwatch-wifi.nmconnection"
    assert "ssid=home net" in wifi.read_text() and "psk=correct horse battery" in wifi.read_text()
    assert mode(wifi) == 0o600
    assert not (boot / "coughwatch/secrets.env").exists() and not (boot / "coughwatch/wifi.psk").exists()
    unit = target / "etc/systemd/system/coughwatch-firstboot.service"
    assert "After=network-online.target" in unit.read_text()
    assert (target / "etc/systemd/system/multi-user.target.wants/coughwatch-firstboot.service").is_symlink()
    stage2 = subprocess.run(["bash", str(boot / "coughwatch/deploy/firstboot.sh"), "stage2"], env=env,
                            capture_output=True, text=True, timeout=900)
    assert stage2.returncode == 0, stage2.stdout + stage2.stderr
    assert (target / "opt/coughwatch/venv/bin/edge").is_file()
    verifier = target / "var/lib/coughwatch/models/cough-verifier"
    assert (verifier / "yamnet.onnx").read_bytes() == (ROOT / "models/cough-verifier/yamnet.onnx").read_bytes()
    assert (verifier / "verifier.json").read_bytes() == (ROOT / "models/cough-verifier/verifier.json").read_bytes()
    conf = (target / "etc/coughwatch/edge.toml").read_text()
    assert 'id = "kitchen"' in conf and 'host = "broker.lan"' in conf and 'username = "pi"' in conf
    assert "port = 8883" in conf and "tls = true" in conf
    assert not unit.exists()  # stage 2 removes itself once the install succeeded


def test_model_push_swaps_verifies_and_rolls_back(tmp_path, tiny_model):
    import onnx

    from conftest import LocalRunner
    from deploy.model_push import push_model
    from deploy.sdcard import DeployError
    from edge.contract import ContractError

    models = tmp_path / "models"
    for name, src in (("cough-detector", DETECTOR), ("covid-screen", CLASSIFIER)):
        (models / name).mkdir(parents=True)
        shutil.copy(src, models / name / "student.int8.onnx")
    check = (f"{sys.executable} -m edge check --skip-mic --model-detector {models}/cough-detector/student.int8.onnx "
             f"--model-classifier {models}/covid-screen/student.int8.onnx")
    current = models / "covid-screen/student.int8.onnx"
    push_model(LocalRunner(), tiny_model, models_dir=str(models), restart="true", check=check)
    assert current.read_bytes() == tiny_model.read_bytes()
    assert (models / "covid-screen/student.int8.onnx.prev").read_bytes() == CLASSIFIER.read_bytes()
    proto = onnx.load(str(tiny_model))
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, str(bare))
    with pytest.raises(ContractError, match="lacks labels"):
        push_model(LocalRunner(), bare, models_dir=str(models), restart="true", check=check)
    with pytest.raises(DeployError, match="rolled back"):  # the Pi's own check catches what slips through
        push_model(LocalRunner(), bare, models_dir=str(models), restart="true", check=check, validate_locally=False)
    assert current.read_bytes() == tiny_model.read_bytes()


def test_model_push_names_a_model_the_contract_refuses_without_a_traceback(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    result = deploy("model", "push", str(bad), "--host", "pi@127.0.0.1")  # refused before any ssh
    assert result.returncode == 2 and "deploy: error:" in result.stderr and "bad.onnx" in result.stderr
    assert "Traceback" not in result.stderr
