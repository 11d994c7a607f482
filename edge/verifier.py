"""A second opinion on the cough detector's windows: a pretrained audio tagger's embedding read by a linear probe.

A verifier folder holds ``verifier.json`` and the tagger's ONNX file it names (e.g. YAMNet: waveform in, an
``embedding`` output). For each window the daemon's detector scored, the tagger's fixed window slides over it
(:func:`tagger_starts`), the embedding's mean and maximum over those positions are standardised and read by a
linear head over the detector's labels; the probe's probability of the positive label is mixed with the detector's
score: ``(1 - weight) * detector + weight * probe``, and that is the score the threshold applies to. Written by
`trainer export-verifier` from a probe teacher (`trainer distill --teacher onnx:PATH --teacher-head probe`); the
one rule for sliding the tagger lives here, and the trainer's tagger teacher uses it.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .contract import ContractError, ModelInfo

SPEC_FILE = "verifier.json"
AUTO = "auto"
"""``[model] verifier = "auto"``: the shipped verifier, where it was tuned with the detector in use (:func:`resolve`)."""
EMBEDDING = "embedding"
FORMAT = 1
"""Version of ``verifier.json``'s layout."""


def tagger_starts(n_samples: int, window: int) -> list[int]:
    """Start samples of a tagger's fixed ``window`` slid over ``n_samples`` (at least one window): every half
    window, and once flush with the end."""
    if n_samples <= window:
        return [0]
    return sorted(set(range(0, n_samples - window + 1, window // 2)) | {n_samples - window})


@dataclass(frozen=True)
class VerifierSpec:
    """What ``verifier.json`` holds."""

    tagger: str
    """The tagger's ONNX file, relative to the folder."""
    tagger_sha256: str
    labels: tuple[str, ...]
    positive_label: str
    sample_rate: int
    """Hz; the detector's, which the tagger must hear too."""
    mean: np.ndarray
    """``[2 * width]``: the embedding features' training mean..."""
    scale: np.ndarray
    """...and standard deviation (both the probe's standardiser)."""
    weight: np.ndarray
    """``[labels, 2 * width]``: the probe's linear head."""
    bias: np.ndarray
    """``[labels]``."""
    mix: float
    """Weight of the probe's probability against the detector's score, in (0, 1]."""
    threshold: float
    """The threshold the mixed score is held to, in [0, 1]."""
    tuned_for: str = ""
    """The ``created`` stamp of the cough detector the threshold was chosen with (``trainer stream
    --choose-detector-threshold --model-verifier``; a detector keeps its stamp when only its own threshold is
    rewritten); empty until a sweep chose it."""


def write_spec(folder: Path, spec: VerifierSpec) -> None:
    body = {"format": FORMAT, "tagger": spec.tagger, "tagger_sha256": spec.tagger_sha256, "labels": list(spec.labels),
            "positive_label": spec.positive_label, "sample_rate": spec.sample_rate, "mix": spec.mix,
            "threshold": spec.threshold, "tuned_for": spec.tuned_for, "mean": spec.mean.tolist(),
            "scale": spec.scale.tolist(), "weight": spec.weight.tolist(), "bias": spec.bias.tolist()}
    (folder / SPEC_FILE).write_text(json.dumps(body))


def read_spec(folder: Path) -> VerifierSpec:
    """``verifier.json`` checked: every field present, shapes agreeing, numbers finite (ContractError naming it)."""
    path = folder / SPEC_FILE
    if not path.is_file():
        raise ContractError(f"verifier {folder}: no {SPEC_FILE} (write one with `trainer export-verifier`)")
    try:
        body = json.loads(path.read_text())
        if body.get("format") != FORMAT:
            raise ContractError(f"{path}: format {body.get('format')!r}, this edge reads format {FORMAT}")
        arrays = {k: np.asarray(body[k], dtype=np.float64) for k in ("mean", "scale", "weight", "bias")}
        spec = VerifierSpec(str(body["tagger"]), str(body["tagger_sha256"]), tuple(body["labels"]),
                            str(body["positive_label"]), int(body["sample_rate"]), arrays["mean"], arrays["scale"],
                            arrays["weight"], arrays["bias"], float(body["mix"]), float(body["threshold"]),
                            str(body.get("tuned_for", "")))
    except ContractError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ContractError(f"{path}: unreadable verifier spec ({type(exc).__name__}: {exc})") from exc
    _check(path, spec)
    return spec


def _check(path: Path, s: VerifierSpec) -> None:
    width = s.mean.size
    problems = [
        (s.positive_label in s.labels, f"positive_label {s.positive_label!r} is not among labels {list(s.labels)}"),
        (s.mean.ndim == 1 and s.scale.shape == s.mean.shape, "mean and scale must be vectors of one length"),
        (s.weight.shape == (len(s.labels), width), f"weight must be [{len(s.labels)}, {width}], is {list(s.weight.shape)}"),
        (s.bias.shape == (len(s.labels),), f"bias must have {len(s.labels)} values"),
        (all(np.isfinite(a).all() for a in (s.mean, s.scale, s.weight, s.bias)), "mean, scale, weight, bias must be finite"),
        (bool((s.scale > 0).all()), "scale must be positive"),
        (math.isfinite(s.mix) and 0 < s.mix <= 1, f"mix = {s.mix} must be in (0, 1]"),
        (math.isfinite(s.threshold) and 0 <= s.threshold <= 1, f"threshold = {s.threshold} must be in [0, 1]"),
    ]
    for ok, message in problems:
        if not ok:
            raise ContractError(f"{path}: {message}")


class Verifier:
    """A verifier folder, loaded and tried once on silence and noise; ``__call__`` maps windows to the probe's
    probability of the positive label, :meth:`mixed` to the score the threshold applies to."""

    def __init__(self, folder: str | Path, threads: int = 1) -> None:
        from .inference import make_session

        self.folder = Path(folder)
        self.spec = read_spec(self.folder)
        tagger = self.folder / self.spec.tagger
        if not tagger.is_file():
            raise ContractError(f"verifier {self.folder}: its tagger {self.spec.tagger} is missing")
        if hashlib.sha256(tagger.read_bytes()).hexdigest() != self.spec.tagger_sha256:
            raise ContractError(f"verifier {self.folder}: {self.spec.tagger} is not the file its probe was fitted on "
                                "(sha256 differs)")
        try:
            self.session = make_session(tagger, threads)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise ContractError(f"verifier {self.folder}: onnxruntime cannot load {self.spec.tagger}: {exc}") from exc
        inputs, outputs = self.session.get_inputs(), [o.name for o in self.session.get_outputs()]
        if len(inputs) != 1 or EMBEDDING not in outputs or not isinstance(inputs[0].shape[-1], int):
            raise ContractError(f"verifier {self.folder}: {self.spec.tagger} must take one waveform input of a fixed "
                                f"length and give an {EMBEDDING!r} output (inputs {[i.name for i in inputs]}, outputs "
                                f"{outputs})")
        self.input_name, self.window = inputs[0].name, int(inputs[0].shape[-1])
        width = self.session.get_outputs()[outputs.index(EMBEDDING)].shape[-1]
        if isinstance(width, int) and 2 * width != self.spec.mean.size:
            raise ContractError(f"verifier {self.folder}: the tagger's embedding has {width} features, the probe reads "
                                f"{self.spec.mean.size // 2}")
        self.positive = self.spec.labels.index(self.spec.positive_label)
        noise = np.clip(0.1 * np.random.default_rng(0).standard_normal(self.window), -1, 1)
        try:
            probe = self(np.stack([np.zeros(self.window), noise]).astype(np.float32))
        except Exception as exc:  # noqa: BLE001 - a model that loads but cannot run
            raise ContractError(f"verifier {self.folder}: a test inference on silence and noise failed: {exc}") from exc
        if not np.isfinite(probe).all():
            raise ContractError(f"verifier {self.folder}: a test inference on silence and noise gave {probe.tolist()}")

    def embeddings(self, windows: np.ndarray) -> np.ndarray:
        """``[n, 2 * width]``: the mean, then the maximum, of the tagger's embedding over its positions in each
        window."""
        windows = np.asarray(windows, dtype=np.float32)
        if windows.shape[1] < self.window:
            windows = np.pad(windows, ((0, 0), (0, self.window - windows.shape[1])))
        starts = tagger_starts(windows.shape[1], self.window)
        out = []
        for row in windows:
            per = np.stack([self.session.run([EMBEDDING], {self.input_name: row[None, s:s + self.window]})[0]
                            .reshape(-1) for s in starts])
            out.append(np.concatenate([per.mean(axis=0), per.max(axis=0)]))
        return np.stack(out)

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        s = self.spec
        logits = ((self.embeddings(windows) - s.mean) / s.scale) @ s.weight.T + s.bias
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return (p[:, self.positive] / p.sum(axis=1)).astype(np.float32)

    def check_rate(self, sample_rate: int) -> None:
        """The verifier hears the models' stream: refuse another rate (ContractError)."""
        if self.spec.sample_rate != sample_rate:
            raise ContractError(f"the verifier {self.folder} hears {self.spec.sample_rate} Hz audio, the models "
                                f"{sample_rate} Hz")

    def mixed(self, detector_score: float, probe: float) -> float:
        """The score the threshold applies to."""
        return (1 - self.spec.mix) * detector_score + self.spec.mix * probe

    def may_reach(self, detector_score: float, threshold: float) -> bool:
        """Whether any probe answer could lift ``detector_score`` to ``threshold`` (else the tagger need not run)."""
        return self.mixed(detector_score, 1.0) >= threshold


def check_usable(verifier: Verifier, detector: ModelInfo, *, scanning: bool, threshold_given: bool) -> None:
    """The one check of a verifier against the daemon it joins (the pipeline and `edge check` call it): the models'
    rate; the energy gate (a scanning daemon has no gate sounds to judge); and, unless a threshold is given, the
    cough detector its threshold was chosen with (ContractError or ValueError saying which)."""
    verifier.check_rate(detector.sample_rate)
    if scanning:
        raise ValueError("a verifier judges the energy gate's sounds; with scan_ms > 0 there are none "
                         "(set scan_ms = 0 or verifier = \"\")")
    if not threshold_given:
        check_tuned_for(verifier.spec, verifier.folder, detector)


def check_tuned_for(spec: VerifierSpec, folder: Path, detector: ModelInfo) -> None:
    """Refuse (ContractError) a verifier whose threshold was chosen with another cough detector: the mixed score's
    threshold fits only the detector it was swept with."""
    if spec.tuned_for and spec.tuned_for != detector.created:
        raise ContractError(
            f"verifier {folder}: its threshold {spec.threshold:.2f} was chosen with the cough detector created "
            f"{spec.tuned_for}, and {detector.name} was created {detector.created}: choose it again for this detector "
            f"(trainer stream --stream-split val --choose-detector-threshold --model-verifier {folder} "
            "--model-detector FILE), give a detector threshold, or leave the verifier out (verifier = \"\")")


class Resolved(NamedTuple):
    folder: Path | None
    """The verifier folder to load, or None."""
    why: str
    """One line for the log and `edge check`."""
    set_aside: bool
    """``auto`` found the shipped verifier but cannot use it (worth a warning)."""


def resolve(setting: str, detector: ModelInfo, *, scanning: bool) -> Resolved:
    """The verifier folder a setting names, or None, and a line saying why.

    ``""``: none. A path: that folder. ``"auto"``: the shipped verifier (installed, else a checkout's) unless the
    models carry none, the onset detector scans (a verifier judges the energy gate's sounds only), or its threshold
    was chosen with another cough detector (a pushed or retrained one); each of those runs without it, and says so.
    """
    from .shipped import shipped_verifier

    if setting != AUTO:
        return Resolved(Path(setting), f"verifier {setting}", False) if setting else Resolved(
            None, 'no verifier (verifier = "")', False)
    folder = shipped_verifier()
    if folder is None:
        return Resolved(None, "no verifier: the models carry none (verifier = auto)", False)
    if scanning:
        return Resolved(None, f"no verifier: scan_ms > 0, and {folder} judges the energy gate's sounds only", True)
    tuned_for = read_spec(folder).tuned_for
    if tuned_for != detector.created:
        return Resolved(None, f"no verifier: {folder} was tuned with the cough detector created {tuned_for or '(never)'}"
                              f", {detector.name} was created {detector.created}; choose its threshold for this "
                              f"detector (trainer stream --choose-detector-threshold --model-verifier {folder})", True)
    return Resolved(folder, f"verifier {folder} (auto: the shipped one, tuned with this detector)", False)
