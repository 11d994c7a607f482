"""ONNX export: export, ``onnx.checker``, parity with PyTorch on seeded input, contract check, int8."""
from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from edge.contract import CONTRACT_VERSION, INPUT_NAME, OUTPUT_NAME
from edge.inference import make_session, read_info

if TYPE_CHECKING:
    from .settings import Settings

log = logging.getLogger(__name__)
OPSET = 17


class ExportError(RuntimeError):
    """The exported graph is invalid or disagrees with the PyTorch model."""


class _Probs(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(audio), dim=-1)


def contract_metadata(spec, *, threshold: float, train_data: str, teacher: str, metrics: dict) -> dict[str, str]:
    return {
        "labels": json.dumps(list(spec.labels)),
        "positive_label": spec.positive_label,
        "sample_rate": str(spec.sample_rate),
        "window_samples": str(spec.window_samples),
        "pre_roll_samples": str(spec.pre_roll_samples),
        "window_pad": spec.pad,
        "threshold": f"{threshold:.6f}",
        "teacher": teacher,
        "train_data": train_data,
        "metrics": json.dumps(metrics),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "version": CONTRACT_VERSION,
    }


def seeded_input(spec, seed: int = 0, batch: int = 4) -> np.ndarray:
    """Noise plus a decaying chirp burst: deterministic, speech-band, within [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.arange(spec.window_samples) / spec.sample_rate
    burst = np.sin(2 * np.pi * (300 + 2000 * t) * t) * np.exp(-6 * t)
    x = 0.05 * rng.standard_normal((batch, spec.window_samples)) + 0.5 * burst * rng.uniform(0.2, 1.0, (batch, 1))
    return np.clip(x, -1, 1).astype(np.float32)


def export_onnx(model: nn.Module, path: str | Path, metadata: dict[str, str], *, name: str, seed: int = 0,
                atol: float = 1e-4) -> dict:
    """Export ``model`` (raw audio -> logits) as a contract-conforming ONNX file; returns the parity report."""
    import onnx

    path = Path(path)
    was_training = model.training
    wrapper = _Probs(model).eval()
    x = seeded_input(model.spec, seed)
    try:
        torch.onnx.export(wrapper, (torch.from_numpy(x),), str(path), input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], opset_version=OPSET, dynamo=False,
                          dynamic_axes={INPUT_NAME: {0: "batch", 1: "samples"}, OUTPUT_NAME: {0: "batch"}})
        wrapper.eval()
        with torch.no_grad():
            expected = wrapper(torch.from_numpy(x)).numpy()
    finally:
        model.train(was_training)
    proto = onnx.load(str(path))
    proto.graph.name = name
    set_metadata(proto, metadata)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{path}: onnx.checker rejected the graph: {exc}") from exc
    onnx.save(proto, str(path))
    got = run_onnx(path, x)
    diff = float(np.abs(got - expected).max())
    if diff > atol:
        raise ExportError(f"{path}: ONNX Runtime output differs from PyTorch by {diff:.2e} > {atol:.0e}")
    validate(path)
    log.info("exported %s (%d bytes), max |onnx - torch| = %.2e", path, path.stat().st_size, diff)
    return {"max_abs_diff": diff, "atol": atol, "seed": seed}


def set_metadata(proto, metadata: dict[str, str]) -> None:
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def set_threshold(path: str | Path, threshold: float) -> None:
    """Write ``threshold`` into a contract file's metadata (the file is then scored at the threshold it carries)."""
    import onnx

    proto = onnx.load(str(path))
    metadata = {p.key: p.value for p in proto.metadata_props}
    set_metadata(proto, {**metadata, "threshold": f"{float(threshold):.6f}"})
    onnx.save(proto, str(path))
    validate(path)


def validate(path: str | Path):
    """Run the edge's own contract check on a file (the same code the daemon runs at load)."""
    return read_info(make_session(path), path)


def run_onnx(path: str | Path, windows: np.ndarray, batch_size: int = 64) -> np.ndarray:
    sess = make_session(path, threads=1)
    return np.concatenate([sess.run([OUTPUT_NAME], {INPUT_NAME: windows[s: s + batch_size]})[0]
                           for s in range(0, len(windows), batch_size)])


def quantize_int8(float_path: str | Path, out_path: str | Path, calibration: np.ndarray, *, kind: str) -> Path:
    """Static QDQ int8 with calibration audio (cnn; the log-mel front end stays float) or dynamic int8 (hf)."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)

    float_path, out_path = Path(float_path), Path(out_path)
    proto = onnx.load(str(float_path))
    metadata = {p.key: p.value for p in proto.metadata_props}
    if kind == "cnn":
        keep_float = [n.name for n in proto.graph.node if n.name.startswith("/model/frontend/") or n.op_type == "Softmax"]

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.batches = iter([{INPUT_NAME: calibration[i: i + 1]} for i in range(len(calibration))])

            def get_next(self):
                return next(self.batches, None)

        quantize_static(str(float_path), str(out_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=keep_float)
    else:
        quantize_dynamic(str(float_path), str(out_path), weight_type=QuantType.QInt8)
    q = onnx.load(str(out_path))
    q.graph.name = proto.graph.name
    set_metadata(q, {**metadata, "quantization": "int8-qdq-static" if kind == "cnn" else "int8-dynamic"})
    onnx.checker.check_model(q)
    onnx.save(q, str(out_path))
    validate(out_path)
    return out_path


def reexport(checkpoint: Path, out: Path, s: Settings, *, threshold: float | None) -> list[Path]:
    """A run's checkpoint as `trainer distill` exports it, into the folder ``out``: ``student.onnx``, and with
    ``run.quantize`` ``student.int8.onnx`` calibrated on ``data.manifest`` (the run's own, from its settings.json)."""
    from . import data as D
    from .context import ContextSettings, SceneMaker
    from .models import load_checkpoint
    from .train import evaluation_windows

    model = load_checkpoint(checkpoint)
    report_path = checkpoint.parent / "report.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    if threshold is None:
        if "thresholds" not in report:
            raise ValueError(f"no --threshold given and no {report_path} to take the validation threshold from")
        threshold = report["thresholds"]["student"]
    if s.run.quantize and not s.data.manifest:
        raise ValueError("int8 needs audio to calibrate on: give the run's --config RUN/settings.json or --data "
                         "(or --no-run-quantize)")
    metrics = {"roc_auc": report.get("results", {}).get("student", {}).get("pooled", {}).get("roc_auc")}
    meta = contract_metadata(model.spec, threshold=threshold, train_data=s.data.manifest or "?",
                             teacher=s.teacher.source, metrics=metrics)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "student.onnx"]
    export_onnx(model, files[0], meta, name=checkpoint.parent.name or out.name)
    if s.run.quantize:
        spec = model.spec
        clips = D.load_manifests(s.data.manifest, s.data.label_map)[:128]
        clips = D.load_audio(clips, spec.sample_rate, min_samples=spec.sample_rate // 10)
        maker = SceneMaker(ContextSettings(mode=spec.pad, sample_rate=spec.sample_rate), clips, spec.window_samples)
        ws = evaluation_windows(clips, maker, tuple(sorted({c.label for c in clips})), window=spec.window_samples,
                                pre_roll=spec.pre_roll_samples, seed=s.run.seed, split="evaluate")
        files.append(quantize_int8(files[0], out / "student.int8.onnx", ws.windows[:128], kind=spec.kind))
    return files


VERIFIER_TOLERANCE = 1e-4
"""Largest difference of the exported verifier's probability from the probe teacher's on seeded windows."""


def export_verifier(teacher: Path, out: Path, *, mix: float, threshold: float, seed: int = 0) -> Path:
    """A probe teacher (`--teacher onnx:PATH --teacher-head probe`) as an edge verifier folder: its tagger's ONNX
    file copied, ``verifier.json`` (the standardiser and the linear head, the mix and the threshold of the mixed
    score), and the tagger's README as ``TAGGER.md`` where one lies beside it (provenance and licence). The folder
    is then loaded by :class:`edge.verifier.Verifier` and compared with the teacher on seeded windows."""
    import shutil

    from edge.verifier import Verifier, VerifierSpec, write_spec

    from .models import load_checkpoint

    model = load_checkpoint(teacher)
    if model.spec.kind != "onnx-probe":
        raise ValueError(f"{teacher} is a {model.spec.kind!r} teacher; a verifier is made from a probe teacher "
                         "(trainer distill --teacher onnx:PATH --teacher-head probe)")
    tagger = model.tagger
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tagger.path, out / tagger.path.name)
    readme = tagger.path.parent / "README.md"
    if readme.is_file():
        shutil.copyfile(readme, out / "TAGGER.md")
    digest = bytes(tagger.file_sha256.tolist()).hex()
    spec = VerifierSpec(tagger.path.name, digest, tuple(tagger.labels), tagger.labels[tagger.positive],
                        model.spec.sample_rate, model.mean.double().numpy(), model.scale.double().numpy(),
                        model.head.weight.detach().double().numpy(), model.head.bias.detach().double().numpy(),
                        float(mix), float(threshold))
    write_spec(out, spec)
    (out / "MODEL_CARD.md").write_text(verifier_card(teacher, model.spec.source, spec))
    windows = seeded_input(model.spec, seed)
    with torch.no_grad():
        want = torch.softmax(model(torch.from_numpy(windows)), -1)[:, tagger.positive].numpy()
    got = Verifier(out)(windows)
    worst = float(np.abs(got - want).max())
    if worst > VERIFIER_TOLERANCE:
        raise ValueError(f"{out}: the verifier differs from the teacher {teacher} by {worst:.2e} on seeded windows")
    log.info("verifier written to %s (%s, mix %.2f, threshold %.2f); it matches the teacher within %.1e", out,
             tagger.path.name, mix, threshold, worst)
    return out


def verifier_card(teacher: Path, source: str, spec) -> str:
    """The verifier folder's model card: what it is, where its parts come from (each data set with its licence),
    how the daemon uses it."""
    from .report import data_attribution

    settings = teacher.parent / "settings.json"
    data = json.loads(settings.read_text()).get("data", {}).get("manifest", "") if settings.is_file() else ""
    return "\n".join([
        "# Verifier: a pretrained tagger's second opinion on the cough detector's sounds", "",
        "Research screening signal only, not a diagnosis.", "",
        f"- Tagger: `{spec.tagger}` (sha256 `{spec.tagger_sha256}`), from `{source}`, used frozen; its provenance and "
        "licence are in `TAGGER.md`.",
        f"- Probe: logistic regression on the mean and maximum of the tagger's `embedding` over the window, fitted "
        f"on the training windows of the run whose teacher is `{teacher}`" + (", from:" if data else "."),
        *(f"  {line}" for line in data_attribution(data)),
        f"- Labels: {', '.join(spec.labels)}; the daemon mixes the probe's probability of `{spec.positive_label}` into "
        f"the cough detector's score: `(1 - {spec.mix:g}) * detector + {spec.mix:g} * probe`.",
        "- The threshold of that mixed score is in `verifier.json`, chosen on a validation stream with `trainer stream "
        "--stream-split val --choose-detector-threshold --model-verifier <this folder> --model-detector FILE`, which "
        "also records the detector it was chosen with (`tuned_for`, that detector's `created` stamp).",
        "- Use: installed as `cough-verifier` beside the models, the daemon uses it by default (`[model] verifier = "
        "auto`) with the detector it was tuned with, and runs that detector alone otherwise; `--model-verifier <this "
        "folder>` names it (README, \"A second opinion from the pretrained tagger\").",
        "- Figures on the live-stream benchmark, when measured: `stream.md` (`trainer stream --config "
        "bench/stream-negatives.toml --out <this folder>`) and `threshold-sweep.png`.", ""])
