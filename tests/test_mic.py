"""MicSource against a stand-in for PortAudio: resampling, overruns, unplug and late enumeration."""
from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np

from edge.audio import MicSettings, MicSource


class FakePortAudio:
    """The part of the sounddevice module MicSource uses; a test plugs the device in and out."""

    def __init__(self) -> None:
        self.devices = [{"name": "Built-in Output", "max_input_channels": 0, "default_samplerate": 48000.0}]
        self.streams: list = []

    def plug(self) -> None:
        self.devices.append({"name": "USB PnP Sound Device", "max_input_channels": 1, "default_samplerate": 48000.0})

    def unplug(self) -> None:
        self.devices = self.devices[:1]
        for stream in self.streams:
            stream.active = False

    def query_devices(self, device=None, kind=None):
        if device is None:
            return self.devices
        return self.devices[device]

    def InputStream(self, *, device, callback, samplerate, blocksize, **kw):  # noqa: N802 - sounddevice's name
        if device is None or device >= len(self.devices):
            raise RuntimeError("Error opening InputStream: Invalid device")
        fake = self

        class Stream:
            active = False

            def start(self):
                self.active = True

            def close(self):
                self.active = False

            def feed(self, block: np.ndarray, overflow: bool = False):
                callback(block[:, None], len(block), None, SimpleNamespace(input_overflow=overflow))

        stream = Stream()
        fake.streams.append(stream)
        return stream


def test_resamples_counts_overruns_and_reopens_a_replugged_device():
    pa = FakePortAudio()
    pa.plug()
    mic = MicSource(MicSettings(device="usb pnp", buffer_s=1.0), 16000, backend=pa)
    assert mic.native_rate == 48000 and mic.last_error == ""
    tone = np.sin(2 * np.pi * 440 * np.arange(48000) / 48000).astype(np.float32) * 0.5
    pa.streams[-1].feed(tone)
    out = mic.read(timeout=1.0)
    assert 15000 < out.size <= 16000  # 48 kHz resampled to the model's 16 kHz (soxr keeps a few ms in flight)
    pa.streams[-1].feed(tone[:3072], overflow=True)  # PortAudio reports an input overflow
    pa.streams[-1].feed(np.zeros(60000, dtype=np.float32))  # more than the 1 s ring buffer holds
    assert mic.overruns == 2
    mic.read(timeout=0.1)

    pa.unplug()
    assert mic.read(timeout=0.1).size == 0
    assert "no input device matches" in mic.last_error
    pa.plug()
    deadline = time.monotonic() + 10
    while mic.last_error and time.monotonic() < deadline:
        mic.read(timeout=0.1)
    assert mic.last_error == "" and len(pa.streams) == 2  # reopened once, by name
    pa.streams[-1].feed(tone)
    assert mic.read(timeout=1.0).size > 0
    mic.close()


def test_a_microphone_late_to_enumerate_is_waited_for():
    pa = FakePortAudio()
    mic = MicSource(MicSettings(device="usb pnp"), 16000, backend=pa)
    assert "no input device matches" in mic.last_error
    pa.plug()
    deadline = time.monotonic() + 10
    while mic.last_error and time.monotonic() < deadline:
        mic.read(timeout=0.1)
    assert mic.last_error == "" and mic.native_rate == 48000
    mic.close()
