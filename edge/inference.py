"""ONNX Runtime inference for contract-conforming models. Sessions are built in one place."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from .contract import INPUT_NAME, OUTPUT_NAME, ContractError, ModelInfo, check_io, parse_metadata


def make_session(path: str | Path, threads: int = 1):
    """The only place an ``InferenceSession`` is created: CPU provider, ``threads`` intra-op threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class Classifier:
    """A model file checked against the contract at load; ``__call__`` maps windows to probabilities."""

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        path = Path(path)
        if not path.is_file():
            raise ContractError(f"model file {path} does not exist")
        raw = path.read_bytes()
        self.sha256 = hashlib.sha256(raw).hexdigest()
        try:
            self.session = make_session(path, threads)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise ContractError(f"{path}: onnxruntime cannot load it: {exc}") from exc
        meta = self.session.get_modelmeta()
        name = meta.graph_name if meta.graph_name and meta.graph_name not in ("main_graph", "torch_jit") else path.stem
        try:
            self.info: ModelInfo = parse_metadata(dict(meta.custom_metadata_map), name=name)
            check_io(self.info, [(i.name, i.shape) for i in self.session.get_inputs()],
                     [(o.name, o.shape) for o in self.session.get_outputs()])
        except ContractError as exc:
            raise ContractError(f"{path}: {exc}") from exc
        self.path = path

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        windows = np.asarray(windows, dtype=np.float32)
        if windows.ndim != 2 or windows.shape[1] != self.info.window_samples:
            raise ValueError(f"{self.info.name}: expected windows of shape [batch, {self.info.window_samples}], "
                             f"got {windows.shape}")
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: windows})[0]
