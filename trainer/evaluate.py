"""Metrics for binary screening: threshold chosen on validation data, bootstrap CI on ROC-AUC."""
from __future__ import annotations

import numpy as np
import torch

from .losses import kd_loss


def choose_threshold(is_positive: np.ndarray, scores: np.ndarray) -> float:
    """The threshold that maximises Youden's J (sensitivity + specificity - 1). Use on validation data only."""
    from sklearn.metrics import roc_curve

    fpr, tpr, thr = roc_curve(is_positive, scores)
    best = int(np.argmax(tpr - fpr))
    return float(np.clip(thr[best], 0.0, 1.0))


def binary_metrics(is_positive: np.ndarray, scores: np.ndarray, threshold: float, *, bootstrap: int = 1000,
                   seed: int = 0) -> dict:
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support, roc_auc_score

    is_positive = np.asarray(is_positive, dtype=bool)
    pred = scores >= threshold
    p, r, f1, _ = precision_recall_fscore_support(is_positive, pred, average="binary", zero_division=0)
    out = {"n": int(is_positive.size), "n_positive": int(is_positive.sum()), "threshold": float(threshold),
           "accuracy": float(accuracy_score(is_positive, pred)), "precision": float(p), "recall": float(r),
           "f1": float(f1), "roc_auc": None, "roc_auc_ci95": None}
    if 0 < is_positive.sum() < is_positive.size:
        out["roc_auc"] = float(roc_auc_score(is_positive, scores))
        out["roc_auc_ci95"] = bootstrap_auc_ci(is_positive, scores, bootstrap, seed)
    return out


def bootstrap_auc_ci(is_positive: np.ndarray, scores: np.ndarray, n: int, seed: int) -> list[float] | None:
    """Percentile 95% interval of ROC-AUC over ``n`` resamples (resamples with one class are skipped)."""
    from sklearn.metrics import roc_auc_score

    if n <= 0:
        return None
    rng = np.random.default_rng(seed)
    aucs = []
    for _ in range(n):
        idx = rng.integers(0, is_positive.size, is_positive.size)
        y = is_positive[idx]
        if 0 < y.sum() < y.size:
            aucs.append(roc_auc_score(y, scores[idx]))
    return [float(np.percentile(aucs, 2.5)), float(np.percentile(aucs, 97.5))] if aucs else None


def paired_auc_difference(is_positive: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray, n: int,
                          seed: int) -> dict:
    """ROC-AUC of ``a`` minus that of ``b`` on the same examples, with a paired bootstrap 95% interval.

    Each resample draws the same examples for both, so the interval reflects the difference between the
    models, not the test set's luck; an interval that contains 0 means the data cannot tell them apart.
    """
    from sklearn.metrics import roc_auc_score

    is_positive = np.asarray(is_positive, dtype=bool)
    out = {"diff": float(roc_auc_score(is_positive, scores_a) - roc_auc_score(is_positive, scores_b)), "ci95": None}
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(max(n, 0)):
        idx = rng.integers(0, is_positive.size, is_positive.size)
        y = is_positive[idx]
        if 0 < y.sum() < y.size:
            diffs.append(roc_auc_score(y, scores_a[idx]) - roc_auc_score(y, scores_b[idx]))
    if diffs:
        out["ci95"] = [float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))]
    return out


def evaluate(probs: np.ndarray, targets: np.ndarray, positive: int, threshold: float, *, groups: list[str] | None = None,
             bootstrap: int = 1000, seed: int = 0) -> dict:
    """Pooled metrics, and per value of ``groups`` (one string per example) when given."""
    is_pos = targets == positive
    scores = probs[:, positive]
    out = {"pooled": binary_metrics(is_pos, scores, threshold, bootstrap=bootstrap, seed=seed)}
    if groups is not None:
        groups_arr = np.asarray(groups)
        out["by_group"] = {
            str(g): binary_metrics(is_pos[groups_arr == g], scores[groups_arr == g], threshold, bootstrap=bootstrap,
                                   seed=seed)
            for g in sorted(set(groups))
        }
    return out


def distillation_loss(student_logits: np.ndarray, teacher_logits: np.ndarray, targets: np.ndarray, *, alpha: float,
                      temperature: float) -> dict[str, float]:
    """The KD objective on held-out data (log-probabilities are valid logits, so ONNX outputs work too)."""
    terms = kd_loss(torch.from_numpy(student_logits).float(), torch.from_numpy(teacher_logits).float(),
                    torch.from_numpy(targets).long(), alpha=alpha, temperature=temperature)
    return {k: float(v) for k, v in terms.items()}
