"""Pretrained ONNX audio taggers as frozen teachers: ``--teacher onnx:PATH`` (e.g. YAMNet, AudioSet's 521 classes).

A tagger takes a fixed window of waveform (its first input, ``[1, samples]``) and returns independent class
scores in [0, 1] (an output named ``scores``, else its first output). The adapter slides that window over
ours with a hop of half its length (and once more at the end), keeps each class's highest score over the
positions, and maps classes onto our labels: the positive label's probability is the highest score among
its ``--teacher-classes`` (e.g. ``Cough``); the other labels share the rest. Class names come from a
``class_map.csv`` (``index,mid,display_name``, as YAMNet ships it) beside the model file.

``--teacher-head probe`` reads the tagger's embedding instead (an output named ``embedding``: YAMNet's 1024
pooled features), its mean and maximum over the positions, and a logistic regression fitted on our labels
maps it onto them (:class:`ProbeTeacher`): the tagger's knowledge of sounds, our labels' meaning of cough.
"""
from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edge.verifier import tagger_starts

PREFIX = "onnx:"
TAGGER_RATE = 16000
"""Sample rate of the taggers this adapter knows (YAMNet: 16 kHz)."""
EMBEDDING = "embedding"
"""The output a probe teacher reads (YAMNet's 1024 pooled features)."""
PROBE_C = (0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 1.0)
"""Inverse regularisation strengths a probe tries; validation ROC-AUC picks one."""


def is_tagger(source: str) -> bool:
    return source.startswith(PREFIX)


def read_class_names(model: Path) -> list[str]:
    path = model.with_name("class_map.csv")
    if not path.is_file():
        raise FileNotFoundError(f"{model}: no class_map.csv beside it (index,mid,display_name), so its classes "
                                "cannot be named")
    with path.open(newline="") as fh:
        return [row["display_name"] for row in csv.DictReader(fh)]


def parse_class_names(text: str, known: list[str], setting: str) -> list[str]:
    """Comma-separated class names of a tagger; a name that itself holds commas (YAMNet's ``Crying, sobbing``) is
    recognised as a whole. Unknown names are a clear error naming ``setting``."""
    parts, names, i = [p.strip() for p in text.split(",")], [], 0
    known_set = set(known)
    while i < len(parts):
        for j in range(len(parts), i, -1):  # the longest run of pieces that names a class
            if ", ".join(parts[i:j]) in known_set:
                names.append(", ".join(parts[i:j]))
                i = j
                break
        else:
            if parts[i]:
                raise ValueError(f"{setting} = {text!r}: {parts[i]!r} is not one of the tagger's classes "
                                 f"(e.g. {', '.join(known[:3])}; see class_map.csv)")
            i += 1
    if not names:
        raise ValueError(f"{setting} = {text!r}: give at least one of the tagger's class names, e.g. 'Cough'")
    return names


class OnnxTagger(nn.Module):
    """A frozen tagger with the teacher interface: ``[batch, samples]`` audio -> logits over our labels."""

    def __init__(self, path: str | Path, labels: tuple[str, ...], positive_label: str, classes: str,
                 sample_rate: int, setting: str = "teacher", classes_setting: str = "teacher.classes") -> None:
        """``setting`` and ``classes_setting``: the settings that named the file and the classes; errors name them."""
        super().__init__()
        from edge.inference import make_session

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{setting} = {PREFIX}{path}: no such ONNX file")
        if sample_rate != TAGGER_RATE:
            raise ValueError(f"{setting} = {PREFIX}{path} hears {TAGGER_RATE} Hz audio but data.sample_rate is "
                             f"{sample_rate} Hz")
        self.class_names = read_class_names(self.path)
        wanted = parse_class_names(classes, self.class_names, classes_setting)
        self.positive_columns = [self.class_names.index(c) for c in wanted]
        self.labels, self.positive = labels, labels.index(positive_label)
        self.session = make_session(self.path)
        first = self.session.get_inputs()[0]
        self.input_name, self.window = first.name, int(first.shape[-1])
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.output_name = "scores" if "scores" in self.outputs else self.outputs[0]
        digest = hashlib.sha256(self.path.read_bytes()).digest()
        self.register_buffer("file_sha256", torch.tensor(list(digest), dtype=torch.uint8))
        import onnx

        model = onnx.load(str(self.path))
        self.n_parameters = int(sum(np.prod(t.dims) for t in model.graph.initializer))

    def _positions(self, audio: np.ndarray, output: str) -> np.ndarray:
        """``[batch, positions, width]``: ``output`` at each position of the tagger's window slid over each row."""
        audio = np.asarray(audio, dtype=np.float32)
        n = audio.shape[1]
        if n < self.window:
            audio = np.pad(audio, ((0, 0), (0, self.window - n)))
            n = self.window
        starts = tagger_starts(n, self.window)
        return np.stack([np.stack([self.session.run([output], {self.input_name: row[None, s:s + self.window]})[0]
                                   .reshape(-1) for s in starts]) for row in audio]).astype(np.float32)

    def class_scores(self, audio: np.ndarray) -> np.ndarray:
        """``[batch, n_classes]``: each class's highest score over the tagger's positions in each window."""
        return self._positions(audio, self.output_name).max(axis=1)

    def positive_scores(self, audio: np.ndarray) -> np.ndarray:
        """``[batch]``: the highest score among the positive label's classes (``classes``) in each window."""
        return self.class_scores(audio)[:, self.positive_columns].max(axis=1)

    def embedding_width(self) -> int:
        """Width of the ``embedding`` output at one position; a tagger without one is refused, naming its outputs."""
        if EMBEDDING not in self.outputs:
            raise ValueError(f"{self.path} has no output named {EMBEDDING!r} (its outputs: {self.outputs}); "
                             "teacher.head = probe needs one")
        return int(self.session.get_outputs()[self.outputs.index(EMBEDDING)].shape[-1])

    def embeddings(self, audio: np.ndarray) -> np.ndarray:
        """``[batch, 2 * width]``: the mean, then the maximum, of the tagger's ``embedding`` output over its
        positions in each window."""
        self.embedding_width()
        per = self._positions(audio, EMBEDDING)
        return np.concatenate([per.mean(axis=1), per.max(axis=1)], axis=1)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        p = np.clip(self.positive_scores(audio.detach().float().cpu().numpy()), 1e-6, 1 - 1e-6)
        probs = np.empty((len(p), len(self.labels)), dtype=np.float32)
        probs[:] = ((1 - p) / max(1, len(self.labels) - 1))[:, None]
        probs[:, self.positive] = p
        return torch.from_numpy(np.log(probs)).to(audio.device)


class ProbeTeacher(nn.Module):
    """``--teacher-head probe``: a frozen tagger's embedding (:meth:`OnnxTagger.embeddings`), standardised, read by a
    linear head over our labels that :meth:`fit` sets from a logistic regression on labelled windows.

    Embeddings are kept by window content (SHA-1 of its samples), so windows it was fitted on are not heard twice.
    """

    def __init__(self, tagger: OnnxTagger) -> None:
        super().__init__()
        self.tagger = tagger
        width = 2 * tagger.embedding_width()
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("scale", torch.ones(width))
        self.head = nn.Linear(width, len(tagger.labels))
        self.n_parameters = tagger.n_parameters + sum(p.numel() for p in self.head.parameters())
        self._known: dict[str, np.ndarray] = {}

    def remember(self, keys: list[str], rows: np.ndarray) -> None:
        """Embeddings heard before (a cache), by the SHA-1 of each window's samples."""
        self._known.update(zip(keys, rows))

    def features(self, audio: np.ndarray, desc: str = "") -> np.ndarray:
        """``[batch, width]`` embeddings of ``audio`` windows, from what this teacher has heard where it can."""
        from tqdm import tqdm

        audio = np.asarray(audio, dtype=np.float32)
        keys = [hashlib.sha1(row.tobytes()).hexdigest() for row in audio]
        for key, row in tqdm(list(zip(keys, audio)), desc=desc, unit="window", disable=not desc, mininterval=5):
            if key not in self._known:
                self._known[key] = self.tagger.embeddings(row[None])[0]
        return np.stack([self._known[k] for k in keys])

    def fit(self, train: np.ndarray, train_targets: np.ndarray, val: np.ndarray, val_targets: np.ndarray,
            c_values: tuple[float, ...] = PROBE_C) -> dict[float, float]:
        """Fit the head on ``train`` windows; each C in ``c_values`` is scored by the positive class's ROC-AUC on
        ``val`` windows and the best is kept. Returns that ROC-AUC per C."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.metrics import roc_auc_score
        from sklearn.preprocessing import StandardScaler

        positive, n_labels = self.tagger.positive, len(self.tagger.labels)
        missing = sorted(set(range(n_labels)) - set(np.unique(train_targets).tolist()))
        if missing:
            raise ValueError(f"teacher.head = probe: no training window of {[self.tagger.labels[i] for i in missing]}")
        heard = self.features(train, "probe: train embeddings")
        scaler = StandardScaler().fit(heard)
        x_train = scaler.transform(heard)
        x_val = scaler.transform(self.features(val, "probe: validation embeddings"))
        fitted, scores = {}, {}
        for c in c_values:
            fitted[c] = LogisticRegression(C=c, class_weight="balanced", max_iter=2000).fit(x_train, train_targets)
            scores[c] = float(roc_auc_score(val_targets == positive, fitted[c].predict_proba(x_val)[:, positive]))
        best = fitted[max(scores, key=scores.get)]
        weight, bias = np.zeros((n_labels, x_train.shape[1])), np.zeros(n_labels)
        if n_labels == 2:  # sklearn's binary model: one row, the logit of class 1 against class 0
            weight[1], bias[1] = best.coef_[0], best.intercept_[0]
        else:
            weight[:], bias[:] = best.coef_, best.intercept_
        with torch.no_grad():
            self.mean.copy_(torch.from_numpy(scaler.mean_))
            self.scale.copy_(torch.from_numpy(scaler.scale_))
            self.head.weight.copy_(torch.from_numpy(weight))
            self.head.bias.copy_(torch.from_numpy(bias))
        return scores

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        x = torch.from_numpy(self.features(audio.detach().float().cpu().numpy())).to(self.mean.device)
        return self.head((x - self.mean) / self.scale)


def label_checker(source: str, classes: str, positive: str, sample_rate: int) -> OnnxTagger:
    """The tagger of ``--data-label-check`` (``onnx:PATH``), loaded before any audio is: a missing file or an unknown
    class name fails at once, naming the setting."""
    return OnnxTagger(source[len(PREFIX):], (positive, "other"), positive, classes, sample_rate, "data.label_check",
                      "data.label_check_classes")


def check_labels(tagger: OnnxTagger, min_score: float, clips: list, positive: str, cache: Path,
                 progress: bool = True) -> tuple[list, list[dict]]:
    """``--data-label-check``: the recordings not labelled ``positive`` that ``tagger`` (:func:`label_checker`)
    scores ``min_score`` or more on its classes anywhere are left out. Returns the clips kept and one row per
    recording checked (path, label, score, left_out). Scores are cached in ``cache`` by recording and tagger."""
    import json

    from tqdm import tqdm

    key = {"tagger": bytes(tagger.file_sha256.tolist()).hex(), "columns": tagger.positive_columns}
    known = json.loads(cache.read_text()) if cache.is_file() else {}
    scores = known.get("scores", {}) if all(known.get(k) == v for k, v in key.items()) else {}
    checked = [c for c in clips if c.label != positive]
    for c in tqdm(checked, desc="label check", unit="recording", disable=not progress, mininterval=5):
        if c.sha256 not in scores:
            scores[c.sha256] = float(tagger.positive_scores(c.audio[None])[0])
    cache.write_text(json.dumps({**key, "scores": scores}))
    rows = [{"path": str(c.path), "label": c.extra.get("original_label", c.label), "score": round(scores[c.sha256], 4),
             "left_out": scores[c.sha256] >= min_score} for c in checked]
    out = {c.sha256 for c, r in zip(checked, rows) if r["left_out"]}
    return [c for c in clips if c.sha256 not in out], rows
