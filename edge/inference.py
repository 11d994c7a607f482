"""ONNX Runtime inference for contract-conforming models. Sessions are built in one place."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from .contract import INPUT_NAME, OUTPUT_NAME, ContractError, ModelInfo, check_io, parse_metadata

PROB_TOLERANCE = 1e-3
"""How far outside [0, 1] a probability may stray (int8 rounding) before the load-time probe refuses the model."""


def check_rates(detector: "Model", classifier: "Model") -> None:
    """The daemon feeds both models one stream: their sample rates must agree (ContractError otherwise)."""
    if detector.info.sample_rate != classifier.info.sample_rate:
        raise ContractError(
            f"the detector {detector.info.name} ({detector.path}) expects {detector.info.sample_rate} Hz audio but the "
            f"classifier {classifier.info.name} ({classifier.path}) expects {classifier.info.sample_rate} Hz: both "
            "models hear the same stream, so they must share one sample rate")


def make_session(path: str | Path, threads: int = 1):
    """The only place an ``InferenceSession`` is created: CPU provider, ``threads`` intra-op threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def read_info(session, path: str | Path) -> ModelInfo:
    """The contract of the model a session holds: metadata and graph inputs/outputs checked (ContractError naming
    ``path``). The one check of a model file, for the daemon at load and for `trainer export` after writing."""
    meta = session.get_modelmeta()
    name = meta.graph_name if meta.graph_name and meta.graph_name not in ("main_graph", "torch_jit") else Path(path).stem
    try:
        info = parse_metadata(dict(meta.custom_metadata_map), name=name)
        check_io(info, [(i.name, i.shape) for i in session.get_inputs()],
                 [(o.name, o.shape) for o in session.get_outputs()])
    except ContractError as exc:
        raise ContractError(f"{path}: {exc}") from exc
    return info


class Model:
    """A model file checked against the contract at load; ``__call__`` maps windows to probabilities."""

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        path = Path(path)
        if not path.is_file():
            raise ContractError(f"model file {path} does not exist")
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise ContractError(f"model file {path} cannot be read: {exc.strerror or exc}") from exc
        self.sha256 = hashlib.sha256(raw).hexdigest()
        try:
            self.session = make_session(path, threads)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise ContractError(f"{path}: onnxruntime cannot load it: {exc}") from exc
        self.info: ModelInfo = read_info(self.session, path)
        self.path = path
        self._probe()

    def _probe(self) -> None:
        """One real inference on silence and on seeded noise: a model that cannot run is refused at load."""
        n = len(self.info.labels)
        noise = np.clip(0.1 * np.random.default_rng(0).standard_normal(self.info.window_samples), -1, 1)
        windows = np.stack([np.zeros(self.info.window_samples), noise]).astype(np.float32)
        what = f"{self.path}: model {self.info.name!r} failed a test inference on silence and noise " \
               f"(2 windows of {self.info.window_samples} samples)"
        import onnxruntime as ort

        quiet = ort.RunOptions()
        quiet.log_severity_level = 4  # the error is in the ContractError; onnxruntime need not print it too
        try:
            probs = self.session.run([OUTPUT_NAME], {INPUT_NAME: windows}, quiet)[0]
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise ContractError(f"{what}: onnxruntime: {str(exc).strip()}") from exc
        probs = np.asarray(probs)
        if probs.shape != (2, n):
            raise ContractError(f"{what}: output {OUTPUT_NAME!r} has shape {list(probs.shape)}, expected [2, {n}] "
                                f"for labels {list(self.info.labels)}")
        if not np.all(np.isfinite(probs)):
            raise ContractError(f"{what}: output {OUTPUT_NAME!r} is not finite: {probs.tolist()}")
        if probs.min() < -PROB_TOLERANCE or probs.max() > 1 + PROB_TOLERANCE:
            raise ContractError(f"{what}: output {OUTPUT_NAME!r} is outside [0, 1]: {probs.tolist()}")

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        windows = np.asarray(windows, dtype=np.float32)
        if windows.ndim != 2 or windows.shape[1] != self.info.window_samples:
            raise ValueError(f"{self.info.name}: expected windows of shape [batch, {self.info.window_samples}], "
                             f"got {windows.shape}")
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: windows})[0]
