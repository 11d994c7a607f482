"""Reference scores computed on the run's own split: what the student has to beat, side by side.

- ``classical (recording)``: the recipe of the data's published reference: 40 log-mel band means and
  standard deviations over the whole recording at 8 kHz, then logistic regression.
- ``classical (window)``: the same features on the window the student sees.
- ``<column> only``: the training positive rate of each value of ``--data-group-by`` (e.g. the recording
  source). Anything a model scores near this may be learning the channel, not the sound.
- ``duration only``: the recording's length, oriented on the training split. A per-cough model on a
  microphone stream cannot see it; a whole-recording model can.

Every baseline is fitted on train, tuned and thresholded on validation, and scored on test.
"""
from __future__ import annotations

import logging

import numpy as np

from .data import Clip
from .metrics import choose_threshold, evaluate

log = logging.getLogger(__name__)
CLASSICAL_RATE = 8000
"""Sample rate of the classical features, in Hz (telephone band: both channels look alike)."""
C_GRID = (0.01, 0.1, 1.0)
"""Inverse L2 strengths tried for the logistic regression; the best on validation is kept."""


def log_mel_stats(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """80 numbers: mean and standard deviation over time of 40 log-mel bands at 8 kHz (32 ms / 10 ms frames)."""
    import librosa

    audio = librosa.resample(audio, orig_sr=sample_rate, target_sr=CLASSICAL_RATE, res_type="soxr_hq")
    mel = librosa.feature.melspectrogram(y=audio, sr=CLASSICAL_RATE, n_fft=256, hop_length=80, n_mels=40)
    logmel = np.log(mel + 1e-6)
    return np.concatenate([logmel.mean(axis=1), logmel.std(axis=1)])


def fit_logistic(x: dict[str, np.ndarray], y: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float]:
    """Standardise, fit on train for each C in ``C_GRID``, keep the best on validation; scores for val and test."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    best = None
    for c in C_GRID:
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000)).fit(x["train"], y["train"])
        auc = roc_auc_score(y["val"], clf.predict_proba(x["val"])[:, 1])
        if best is None or auc > best[0]:
            best = (auc, c, clf)
    _, c, clf = best
    return {k: clf.predict_proba(x[k])[:, 1] for k in ("val", "test")}, c


def run_baselines(parts: dict[str, list[Clip]], sets: dict, positive_label: str, *, labels: tuple[str, ...],
                  sample_rate: int, group_by: str = "", bootstrap: int = 1000, seed: int = 0) -> dict[str, dict]:
    """Each baseline's test metrics (as :func:`trainer.metrics.evaluate` returns them) plus its test scores.

    ``sets`` holds the models' evaluation windows for every split (``train``, ``val``, ``test``:
    :class:`trainer.train.WindowSet`); a baseline that scores whole recordings gives each window its
    recording's score (a window at an onset of the room around it too), so every row is scored on the same
    windows as the models, with the same labels.
    """
    from sklearn.metrics import roc_auc_score

    def per_window(k: str, values) -> np.ndarray:
        return np.asarray(values)[sets[k].clip]

    y = {k: sets[k].targets == labels.index(positive_label) for k in parts}
    groups = list(per_window("test", [c.column(group_by) for c in parts["test"]])) if group_by else None
    scores: dict[str, tuple[dict[str, np.ndarray], dict]] = {}

    whole = {k: per_window(k, np.stack([log_mel_stats(c.audio, sample_rate) for c in v])) for k, v in parts.items()}
    s, c = fit_logistic(whole, y)
    scores["classical (recording)"] = (s, {"C": c, "features": "40 log-mel means + std, whole recording, 8 kHz"})
    win = {k: np.stack([log_mel_stats(w, sample_rate) for w in sets[k].windows]) for k in parts}
    s, c = fit_logistic(win, y)
    scores["classical (window)"] = (s, {"C": c, "features": "40 log-mel means + std, model window, 8 kHz"})

    if group_by:
        column = {k: per_window(k, [c.column(group_by) for c in v]) for k, v in parts.items()}
        rate = {g: float(y["train"][column["train"] == g].mean()) for g in set(column["train"])}
        overall = float(y["train"].mean())
        s = {k: np.array([rate.get(g, overall) for g in column[k]]) for k in ("val", "test")}
        scores[f"{group_by} only"] = (s, {"rates": rate})

    length = {k: per_window(k, [c.audio.size / sample_rate for c in v]) for k, v in parts.items()}
    longer = roc_auc_score(y["train"], length["train"]) >= 0.5
    # A monotone map into (0, 1), so that thresholds stay probabilities.
    scores["duration only"] = ({k: (length[k] if longer else 1.0) / (1.0 + length[k]) for k in ("val", "test")},
                               {"direction": "longer is positive" if longer else "shorter is positive"})

    out = {}
    for name, (s, info) in scores.items():
        threshold = choose_threshold(y["val"], s["val"])
        probs = np.stack([1 - s["test"], s["test"]], axis=1)  # column 1 is the positive score
        out[name] = {**evaluate(probs, y["test"].astype(int), 1, threshold, groups=groups, bootstrap=bootstrap,
                                seed=seed), "fit": info, "test_scores": s["test"]}
        log.info("baseline %s: test ROC-AUC %.3f", name, out[name]["pooled"]["roc_auc"] or float("nan"))
    return out
