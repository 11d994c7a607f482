"""First boot overwrites the secrets' bytes on the FAT partition before deleting them."""
from __future__ import annotations

import os
import subprocess

import pytest

from test_deploy import ARGS, CMDLINE, deploy


@pytest.mark.slow
def test_first_boot_overwrites_secret_bytes_before_deleting_them(tmp_path):
    (tmp_path / "mqtt.pw").write_text("mqtt-s3cret\n")
    (tmp_path / "wifi.psk").write_text("correct horse battery\n")
    boot = tmp_path / "bootfs"
    boot.mkdir()
    (boot / "cmdline.txt").write_text(CMDLINE + "\n")
    assert deploy("sdcard", "--boot", str(boot), *ARGS, "--mqtt-password-file", str(tmp_path / "mqtt.pw"),
                  "--wifi-psk-file", str(tmp_path / "wifi.psk")).returncode == 0
    # A second name for the same data blocks shows what is left of them once first boot has unlinked the file.
    for name in ("secrets.env", "wifi.psk"):
        os.link(boot / "coughwatch" / name, tmp_path / f"blocks-{name}")
    env = {**os.environ, "COUGHWATCH_TARGET": str(tmp_path / "root")}
    stage1 = subprocess.run(["bash", str(boot / "coughwatch/deploy/firstboot.sh"), "stage1"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert stage1.returncode == 0, stage1.stderr
    for name in ("secrets.env", "wifi.psk"):
        assert not (boot / "coughwatch" / name).exists()
        left = (tmp_path / f"blocks-{name}").read_bytes()
        assert b"s3cret" not in left and b"horse" not in left and set(left) <= {0}
    assert "mqtt-s3cret" in (tmp_path / "root/etc/coughwatch/secrets.env").read_text()
