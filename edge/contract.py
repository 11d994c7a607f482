"""The model contract between `trainer` (writes it) and `edge` (reads it).

Pure logic on a ``{key: str}`` metadata mapping, so both halves share one checker and it can be
tested without a model file. See README "Model contract".
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass

REQUIRED_KEYS = (
    "labels",
    "positive_label",
    "sample_rate",
    "window_samples",
    "threshold",
    "teacher",
    "train_data",
    "metrics",
    "created",
    "version",
)
CONTRACT_VERSION = "1"
INPUT_NAME = "audio"
OUTPUT_NAME = "probs"
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 8000, 48000
"""Bounds on ``sample_rate`` in Hz: microphones and the edge's resampler cover this range."""
MIN_WINDOW_S, MAX_WINDOW_S = 0.064, 10.0
"""Bounds on a window's length in seconds: at least two 32 ms STFT frames, at most 10 s (bounded memory)."""


class ContractError(ValueError):
    """A model does not satisfy the coughwatch model contract; the message says what is wrong."""


@dataclass(frozen=True)
class ModelInfo:
    """What the edge needs to know about a contract-conforming model."""

    name: str
    """Model name (the ONNX ``graph.name`` or file stem)."""
    labels: tuple[str, ...]
    """Class names, in the order of the ``probs`` output columns."""
    positive_label: str
    """The label whose probability is compared with ``threshold``."""
    sample_rate: int
    """Input sample rate in Hz."""
    window_samples: int
    """Input window length in samples at ``sample_rate``."""
    pre_roll_samples: int
    """Samples of audio kept before an onset at the start of a window."""
    threshold: float
    """Decision threshold on P(positive_label), chosen on validation data."""
    teacher: str
    train_data: str
    metrics: dict
    created: str
    version: str

    @property
    def positive_index(self) -> int:
        return self.labels.index(self.positive_label)


def parse_metadata(meta: dict[str, str], *, name: str = "model") -> ModelInfo:
    """Validate ``metadata_props`` and return a :class:`ModelInfo`, or raise :class:`ContractError`."""
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise ContractError(
            f"{name}: metadata_props lacks {', '.join(missing)} (a coughwatch model needs "
            f"{', '.join(REQUIRED_KEYS)}); export it with `trainer export`"
        )
    try:
        labels = json.loads(meta["labels"])
    except json.JSONDecodeError as exc:
        raise ContractError(f"{name}: metadata 'labels' is not JSON: {meta['labels']!r}") from exc
    if not (isinstance(labels, list) and len(labels) >= 2 and all(isinstance(x, str) for x in labels)):
        raise ContractError(f"{name}: metadata 'labels' must be a JSON list of >= 2 strings, got {meta['labels']!r}")
    if len(set(labels)) != len(labels):
        raise ContractError(f"{name}: metadata 'labels' has duplicates: {labels}")
    positive = meta["positive_label"]
    if positive not in labels:
        raise ContractError(f"{name}: positive_label {positive!r} is not one of labels {labels}")
    sample_rate = _int(meta, "sample_rate", name, lo=MIN_SAMPLE_RATE, hi=MAX_SAMPLE_RATE, unit=" Hz")
    window = _int(meta, "window_samples", name, lo=math.ceil(MIN_WINDOW_S * sample_rate),
                  hi=round(MAX_WINDOW_S * sample_rate),
                  unit=f" samples ({MIN_WINDOW_S:g}..{MAX_WINDOW_S:g} s at {sample_rate} Hz)")
    pre_roll = _int(meta, "pre_roll_samples", name, lo=0, hi=sys.maxsize) if "pre_roll_samples" in meta else window // 4
    if pre_roll >= window:
        raise ContractError(f"{name}: pre_roll_samples {pre_roll} must be smaller than window_samples {window}")
    try:
        threshold = float(meta["threshold"])
    except ValueError as exc:
        raise ContractError(f"{name}: metadata 'threshold' is not a number: {meta['threshold']!r}") from exc
    if not 0.0 <= threshold <= 1.0:
        raise ContractError(f"{name}: threshold {threshold} is outside [0, 1]")
    try:
        metrics = json.loads(meta["metrics"])
    except json.JSONDecodeError as exc:
        raise ContractError(f"{name}: metadata 'metrics' is not JSON") from exc
    if meta["version"] != CONTRACT_VERSION:
        raise ContractError(f"{name}: contract version {meta['version']!r}, this edge reads {CONTRACT_VERSION!r}")
    return ModelInfo(
        name=name,
        labels=tuple(labels),
        positive_label=positive,
        sample_rate=sample_rate,
        window_samples=window,
        pre_roll_samples=pre_roll,
        threshold=threshold,
        teacher=meta["teacher"],
        train_data=meta["train_data"],
        metrics=metrics if isinstance(metrics, dict) else {"value": metrics},
        created=meta["created"],
        version=meta["version"],
    )


def check_io(info: ModelInfo, inputs: list[tuple[str, list]], outputs: list[tuple[str, list]]) -> None:
    """Check the graph's input/output names and ranks (``(name, shape)`` pairs) against the contract."""
    if [n for n, _ in inputs] != [INPUT_NAME]:
        raise ContractError(f"{info.name}: expected one input named {INPUT_NAME!r}, got {[n for n, _ in inputs]}")
    if len(inputs[0][1]) != 2:
        raise ContractError(f"{info.name}: input {INPUT_NAME!r} must be [batch, samples], got shape {inputs[0][1]}")
    if not outputs or outputs[0][0] != OUTPUT_NAME:
        raise ContractError(f"{info.name}: expected first output named {OUTPUT_NAME!r}, got {[n for n, _ in outputs]}")
    shape = outputs[0][1]
    if len(shape) != 2 or (isinstance(shape[1], int) and shape[1] != len(info.labels)):
        raise ContractError(
            f"{info.name}: output {OUTPUT_NAME!r} must be [batch, {len(info.labels)}] for labels "
            f"{list(info.labels)}, got shape {shape}"
        )


def _int(meta: dict[str, str], key: str, name: str, *, lo: int, hi: int, unit: str = "") -> int:
    try:
        value = int(meta[key])
    except ValueError as exc:
        raise ContractError(f"{name}: metadata {key!r} is not an integer: {meta[key]!r}") from exc
    if not lo <= value <= hi:
        raise ContractError(f"{name}: metadata {key!r} = {value} is outside {lo}..{hi}{unit}")
    return value
