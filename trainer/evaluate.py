"""`trainer evaluate`: score a checkpoint or ONNX file on the windows `trainer distill` cuts from its data settings."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import data as D
from .metrics import evaluate
from .export import run_onnx
from .models import load_checkpoint
from .context import SceneMaker
from .settings import Settings
from .train import evaluation_windows, predict_logits, softmax


@dataclass(frozen=True)
class Scorer:
    """What scoring needs of a model, whether an ONNX file or a checkpoint folder."""

    labels: tuple[str, ...]
    positive: str
    sample_rate: int
    window: int
    pre_roll: int
    threshold: float | None
    """The threshold the file carries (None for a checkpoint)."""
    predict: Callable[[np.ndarray], np.ndarray]


def load_scorer(model_path: Path) -> Scorer:
    if model_path.suffix == ".onnx":
        from edge.inference import Model

        info = Model(model_path).info
        return Scorer(info.labels, info.positive_label, info.sample_rate, info.window_samples, info.pre_roll_samples,
                      info.threshold, lambda w: run_onnx(model_path, w))
    model = load_checkpoint(model_path)
    spec = model.spec
    return Scorer(spec.labels, spec.positive_label, spec.sample_rate, spec.window_samples, spec.pre_roll_samples,
                  None, lambda w: softmax(predict_logits(model, w)))


def evaluate_file(model_path: Path, s: Settings, *, split: str = "all", threshold: float | None = None) -> dict:
    """Metrics for a checkpoint folder or ONNX file on every onset window of the recordings of ``split``.

    The data settings are those of `trainer distill`, and the windows are cut as it cuts them (scenes, rooms,
    synthetic sounds, room windows): a run's settings.json re-scores its model on the windows it was tested on.
    """
    from .distill import add_synthetic, background_pools, context_settings, room_label

    m = load_scorer(model_path)
    s = dataclasses.replace(s, data=dataclasses.replace(s.data, sample_rate=m.sample_rate))
    d, positive = s.data, s.data.positive_label or m.positive
    clips = D.load_manifests(d.manifest, d.label_map)
    D.relabel(clips, positive)
    unknown = {c.label for c in clips} - set(m.labels)
    if unknown:
        raise ValueError(f"manifest labels {sorted(unknown)} are not among the model's labels {list(m.labels)}")
    clips = D.load_audio(clips, m.sample_rate, min_samples=m.sample_rate // 10)
    parts = {"all": clips} if split == "all" else D.split(clips, val=d.val_fraction, test=d.test_fraction,
                                                            seed=s.data.split_seed)
    pools = background_pools(s, parts, positive, progress=False)
    add_synthetic(s, parts, m.labels, positive)
    maker = SceneMaker(context_settings(s), [c for part in pools.values() for c in part] if split == "all"
                       else pools[split], m.window)
    ws = evaluation_windows(parts[split], maker, m.labels, window=m.window, pre_roll=m.pre_roll, seed=s.run.seed,
                            split=split, room_label=room_label(s, m.labels, positive))
    chosen = threshold if threshold is not None else m.threshold if m.threshold is not None else 0.5
    groups = [parts[split][i].column(d.group_by) for i in ws.clip] if d.group_by else None
    return {"model": str(model_path), "manifest": d.manifest, "split": split, "scenes": d.pad,
            "windows": int(len(ws.windows)), "recordings_without_onset": ws.unheard,
            "threshold_source": "flag" if threshold is not None else "model" if m.threshold is not None else "0.5",
            **evaluate(m.predict(ws.windows), ws.targets, m.labels.index(positive), chosen, groups=groups,
                       bootstrap=s.run.bootstrap, seed=s.run.seed)}
