"""`trainer evaluate` and `trainer export`: score any checkpoint or ONNX file, re-export a checkpoint."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import data as D
from .evaluate import evaluate
from .export import contract_metadata, export_onnx, quantize_int8, run_onnx
from .models import load_checkpoint
from .context import ContextSettings, SceneMaker
from .train import WindowSet, evaluation_windows, predict_logits, softmax


def manifest_windows(clips: list[D.Clip], pool: list[D.Clip], labels: tuple[str, ...], *, mode: str, sample_rate: int,
                     window: int, pre_roll: int, seed: int) -> WindowSet:
    """Every onset window of each recording heard in its own seeded scene (rooms drawn from ``pool``)."""
    maker = SceneMaker(ContextSettings(mode=mode, sample_rate=sample_rate), pool, window)
    return evaluation_windows(clips, maker, labels, window=window, pre_roll=pre_roll, seed=seed, split="evaluate")


def evaluate_file(model_path: Path, manifest: str, *, positive_label: str = "", group_by: str = "",
                  threshold: float | None = None, bootstrap: int = 1000, pad: str = "", background: str = "",
                  seed: int = 0) -> dict:
    """Metrics for a checkpoint folder or ONNX file on every onset window of every usable clip of ``manifest``.

    Recordings are heard as in training (``pad``, default the model's own): in ``context`` mode the room is
    made of ``background`` (a manifest; default the manifest's own recordings that are not positive).
    """
    threshold_source = "model" if threshold is None else "flag"
    if model_path.suffix == ".onnx":
        from edge.inference import Classifier

        classifier = Classifier(model_path)
        info = classifier.info
        labels, positive, window, pre_roll = info.labels, info.positive_label, info.window_samples, info.pre_roll_samples
        rate = info.sample_rate
        pad = pad or classifier.session.get_modelmeta().custom_metadata_map.get("window_pad", "zero")
        threshold = info.threshold if threshold is None else threshold
        predict = lambda w: run_onnx(model_path, w)  # noqa: E731
    else:
        model = load_checkpoint(model_path)
        spec = model.spec
        labels, positive, window, pre_roll = spec.labels, spec.positive_label, spec.window_samples, spec.pre_roll_samples
        rate = spec.sample_rate
        pad = pad or spec.pad
        threshold = 0.5 if threshold is None else threshold
        predict = lambda w: softmax(predict_logits(model, w))  # noqa: E731
    positive = positive_label or positive
    clips = D.load_manifest(manifest)
    D.relabel(clips, positive)
    unknown = {c.label for c in clips} - set(labels)
    if unknown:
        raise ValueError(f"manifest labels {sorted(unknown)} are not among the model's labels {list(labels)}")
    clips = D.load_audio(clips, rate, min_samples=rate // 10)
    pool = (D.load_audio(D.load_manifests(background), rate, min_samples=rate // 2) if background
            else [c for c in clips if c.label != positive])
    ws = manifest_windows(clips, pool, labels, mode=pad, sample_rate=rate, window=window, pre_roll=pre_roll, seed=seed)
    probs = predict(ws.windows)
    groups = [clips[i].column(group_by) for i in ws.clip] if group_by else None
    return {"model": str(model_path), "manifest": str(manifest), "scenes": pad, "windows": int(len(ws.windows)),
            "recordings_without_onset": ws.unheard, "threshold_source": threshold_source,
            **evaluate(probs, ws.targets, labels.index(positive), threshold, groups=groups, bootstrap=bootstrap)}


def reexport(checkpoint: Path, out: Path, *, threshold: float | None, int8: bool, calibration: str) -> None:
    model = load_checkpoint(checkpoint)
    report_path = checkpoint.parent / "report.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    if threshold is None:
        if "thresholds" not in report:
            raise ValueError(f"no --threshold given and no {report_path} to take the validation threshold from")
        threshold = report["thresholds"]["student"]
    metrics = {"roc_auc": report.get("results", {}).get("student", {}).get("pooled", {}).get("roc_auc")}
    settings = report.get("settings", {})
    meta = contract_metadata(model.spec, threshold=threshold, train_data=settings.get("data", {}).get("manifest", "?"),
                             teacher=settings.get("teacher", {}).get("source", "?"), metrics=metrics)
    export_onnx(model, out, meta, name=checkpoint.parent.name or out.stem)
    if int8:
        if not calibration:
            raise ValueError("--int8 needs --calibration <manifest> (audio to calibrate activations on)")
        spec = model.spec
        clips = D.load_audio(D.load_manifest(calibration)[:128], spec.sample_rate, min_samples=spec.sample_rate // 10)
        ws = manifest_windows(clips, clips, tuple(sorted({c.label for c in clips})), mode=spec.pad, sample_rate=spec.sample_rate, window=spec.window_samples,
                              pre_roll=spec.pre_roll_samples, seed=0)
        quantize_int8(out, out.with_suffix(".int8.onnx"), ws.windows[:128], kind=spec.kind)
