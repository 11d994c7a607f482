"""Audio sources: microphone (sounddevice), WAV/FLAC file, raw PCM on stdin.

Every source yields mono float32 chunks at the model's rate (``soxr`` resamples as a stream) from
``read()``, returns ``None`` at the end, and counts what it had to drop.
"""
from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

SILENT_PEAK = 1e-4
"""Audio whose peak magnitude stays below this (full scale 1.0) is digital silence: a muted or dead input."""

log = logging.getLogger(__name__)


class AudioError(RuntimeError):
    """An audio source cannot be opened or decoded; the message names it."""


class CannotOpen(AudioError):
    """libsndfile cannot open the file at all (not audio, or a container it does not read, such as WebM)."""


@dataclass(frozen=True)
class MicSettings:
    device: str = ""
    """Input device by name (substring) or index; empty = the system default."""
    sample_rate: int = 0
    """Capture rate in Hz; 0 = the device's default rate (resampled to the model's rate)."""
    block_ms: float = 64.0
    """Audio callback block length in milliseconds."""
    buffer_s: float = 10.0
    """Ring buffer between the callback and the pipeline, in seconds; overflow is counted."""
    reopen_max_s: float = 30.0
    """Upper bound of the back-off between attempts to reopen a lost microphone, in seconds."""

    def __post_init__(self) -> None:
        if self.sample_rate < 0:
            raise ValueError(f"sample_rate = {self.sample_rate} must be >= 0 Hz")
        if not 4 <= self.block_ms <= 1000:
            raise ValueError(f"block_ms = {self.block_ms} must be in [4, 1000] ms")
        if self.buffer_s < 1:
            raise ValueError(f"buffer_s = {self.buffer_s} must be >= 1 s")


class Source(Protocol):
    sample_rate: int
    overruns: int

    def read(self, timeout: float = 1.0) -> np.ndarray | None: ...
    def close(self) -> None: ...


class _Resampler:
    def __init__(self, in_rate: int, out_rate: int) -> None:
        self.ratio_1 = in_rate == out_rate
        if not self.ratio_1:
            import soxr

            self._stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality="HQ")

    def __call__(self, x: np.ndarray, last: bool = False) -> np.ndarray:
        if self.ratio_1:
            return x.astype(np.float32, copy=False)
        return self._stream.resample_chunk(x.astype(np.float32, copy=False), last=last)


MIN_FILE_RATE = 4000
"""Lowest sample rate, in Hz, a file may claim (below it the header is damaged or it is not speech-band audio)."""
MAX_FILE_RATE = 384000
"""Highest sample rate, in Hz, a file may claim."""
CANCEL_DB = 30.0
"""A channel mix this many dB below its channels' mean power means they cancel (anti-phase wiring)."""


class Downmix:
    """``[frames, channels]`` -> mono: the channels' mean, unless they cancel each other out (anti-phase), in which
    case the first channel alone, with one warning: a microphone wired out of phase must not read as silence."""

    def __init__(self, name: str) -> None:
        self.name, self.cancelling = name, False

    def __call__(self, block: np.ndarray) -> np.ndarray:
        mono = block.mean(axis=1)
        if block.shape[1] < 2 or not block.size:
            return mono
        channels = float(np.mean(block.astype(np.float64) ** 2))
        if channels > 1e-10 and float(np.mean(mono.astype(np.float64) ** 2)) < channels * 10 ** (-CANCEL_DB / 10):
            if not self.cancelling:
                log.warning("%s: its channels cancel each other out (anti-phase); using the first channel alone",
                            self.name)
            self.cancelling = True
        return block[:, 0] if self.cancelling else mono


class FileSource:
    """A WAV/FLAC/OGG file, decoded by soundfile in blocks; ``realtime`` paces reads like a microphone."""

    def __init__(self, path: str | Path, sample_rate: int, *, realtime: bool = False, block_s: float = 0.5) -> None:
        import soundfile as sf

        self.path = Path(path)
        try:
            self._file = sf.SoundFile(str(self.path))
        except (sf.LibsndfileError, RuntimeError, OSError) as exc:
            raise CannotOpen(f"{self.path}: cannot open audio file: {exc}") from exc
        self.native_rate = self._file.samplerate
        if not MIN_FILE_RATE <= self.native_rate <= MAX_FILE_RATE:
            raise AudioError(f"{self.path}: header says {self.native_rate} Hz, outside {MIN_FILE_RATE}..{MAX_FILE_RATE} "
                             "Hz: not audio this daemon can hear (a damaged header?)")
        self.sample_rate = sample_rate
        self.overruns = 0
        self._downmix = Downmix(str(self.path))
        self._block = max(1, int(block_s * self.native_rate))
        self._resample = _Resampler(self.native_rate, sample_rate)
        self._realtime = realtime
        self._started = time.monotonic()
        self._delivered = 0
        self._done = False

    def read(self, timeout: float = 1.0) -> np.ndarray | None:
        if self._done:
            return None
        try:
            block = self._file.read(self._block, dtype="float32", always_2d=True)
        except Exception as exc:  # noqa: BLE001 - libsndfile errors on corrupt data mid-file
            raise AudioError(f"{self.path}: decoding failed at frame {self._file.tell()}: {exc}") from exc
        last = len(block) < self._block
        out = self._resample(self._downmix(block), last=last)
        self._done = last
        if self._realtime:
            self._delivered += len(block)
            lag = self._delivered / self.native_rate - (time.monotonic() - self._started)
            if lag > 0:
                time.sleep(lag)
        return out

    def close(self) -> None:
        self._file.close()


def read_file(path: str | Path, sample_rate: int) -> np.ndarray:
    """A whole file as mono float32 at ``sample_rate``, decoded exactly as ``edge run --source`` hears it
    (:class:`FileSource`: soundfile, :class:`Downmix`, soxr HQ as a stream). The trainer reads its audio here too."""
    source = FileSource(path, sample_rate)
    chunks = []
    try:
        while (chunk := source.read()) is not None:
            chunks.append(chunk)
    finally:
        source.close()
    return np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros(0, np.float32)


def to_mono_at(frames: np.ndarray, native_rate: int, sample_rate: int, name: str) -> np.ndarray:
    """``[frames, channels]`` decoded elsewhere, through the same downmix and resampler as :func:`read_file`."""
    resample = _Resampler(native_rate, sample_rate)
    return resample(Downmix(name)(np.asarray(frames, dtype=np.float32).reshape(len(frames), -1)), last=True)


class StdinSource:
    """Raw signed 16-bit little-endian mono PCM on stdin at ``native_rate`` Hz."""

    def __init__(self, native_rate: int, sample_rate: int, stream=None, block_s: float = 0.1) -> None:
        self.stream = stream or sys.stdin.buffer
        self.native_rate, self.sample_rate, self.overruns = native_rate, sample_rate, 0
        self._bytes = max(2, int(block_s * native_rate) * 2)
        self._resample = _Resampler(native_rate, sample_rate)
        self._tail = b""

    def read(self, timeout: float = 1.0) -> np.ndarray | None:
        """Waits at most ``timeout`` s (a stalled pipe must not block shutdown); empty array if nothing came."""
        import os
        import select

        fd = self.stream.fileno()
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            return np.zeros(0, dtype=np.float32)
        data = os.read(fd, self._bytes)
        if not data:
            return None
        data = self._tail + data
        even = len(data) - len(data) % 2
        self._tail = data[even:]
        return self._resample(np.frombuffer(data[:even], dtype="<i2").astype(np.float32) / 32768.0)

    def close(self) -> None:
        pass


def find_device(spec: str, sd=None) -> int | None:
    """An input device index from an index or a case-insensitive name substring (None = default)."""
    if sd is None:
        import sounddevice as sd

    if not spec:
        return None
    devices = sd.query_devices()
    if spec.isdigit():
        idx = int(spec)
        if idx >= len(devices) or devices[idx]["max_input_channels"] < 1:
            raise AudioError(f"mic.device = {spec!r}: no input device with that index")
        return idx
    for i, d in enumerate(devices):
        if spec.lower() in d["name"].lower() and d["max_input_channels"] > 0:
            return i
    names = [d["name"] for d in devices if d["max_input_channels"] > 0]
    raise AudioError(f"mic.device = {spec!r}: no input device matches; inputs: {names}")


class MicSource:
    """sounddevice InputStream; its callback only copies into a bounded ring buffer and never blocks.

    A stream that errors (device unplugged) is reopened by name with exponential back-off, without
    restarting the process. Callback overflows and ring-buffer overflows are both counted in ``overruns``.
    """

    def __init__(self, settings: MicSettings, sample_rate: int, backend=None) -> None:
        """``backend``: the sounddevice module, or anything with its ``query_devices`` and ``InputStream``."""
        if backend is None:
            import sounddevice as backend
        self.sd = backend
        self.s, self.sample_rate = settings, sample_rate
        self.overruns = 0
        self._ring: deque[np.ndarray] = deque()
        self._ring_samples = 0
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._stream = None
        self._next_try = 0.0
        self._backoff = 1.0
        self.native_rate = 0
        self.last_error = ""
        """Why the microphone is not open (empty while it is)."""
        self._try_reopen()  # a microphone late to enumerate after boot is retried, not fatal

    def _open(self) -> None:
        sd = self.sd
        device = find_device(self.s.device, sd)
        rate = self.s.sample_rate or int(sd.query_devices(device, "input")["default_samplerate"])
        self.native_rate = rate
        self._resample = _Resampler(rate, self.sample_rate)
        self._capacity = int(self.s.buffer_s * rate)
        self._stream = sd.InputStream(device=device, channels=1, samplerate=rate, dtype="float32",
                                      blocksize=int(rate * self.s.block_ms / 1000), callback=self._callback)
        self._stream.start()
        self._backoff = 1.0
        log.info("microphone open: %s at %d Hz", sd.query_devices(device, "input")["name"], rate)

    def _callback(self, indata, frames, time_info, status) -> None:
        if status.input_overflow:
            self.overruns += 1
        with self._lock:
            if self._ring_samples + frames > self._capacity:
                self.overruns += 1
                return
            self._ring.append(indata[:, 0].copy())
            self._ring_samples += frames
            self._ready.notify()

    def read(self, timeout: float = 1.0) -> np.ndarray | None:
        if self._stream is None or not self._stream.active:
            self._try_reopen()
        with self._lock:
            if not self._ring:
                self._ready.wait(timeout)
            if not self._ring:
                return np.zeros(0, dtype=np.float32)
            data = np.concatenate(self._ring)
            self._ring.clear()
            self._ring_samples = 0
        return self._resample(data)

    def _try_reopen(self) -> None:
        now = time.monotonic()
        if now < self._next_try:
            time.sleep(min(0.2, self._next_try - now))
            return
        self.close()
        try:
            self._open()
        except Exception as exc:  # noqa: BLE001 - PortAudio raises several types for a missing device
            self.last_error = str(exc)
            self._next_try = now + self._backoff
            log.warning("microphone unavailable (%s); retrying in %.0f s", exc, self._backoff)
            self._backoff = min(self._backoff * 2, self.s.reopen_max_s)
            return
        self.last_error = ""

    def close(self) -> None:
        if self._stream is not None:
            try:
                self._stream.close()
            except Exception:  # noqa: BLE001 - closing a vanished device may fail; it is gone either way
                pass
            self._stream = None
