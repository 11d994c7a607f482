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


def wilson_ci(k: int, n: int) -> list[float] | None:
    """Wilson score 95% interval of the share ``k / n`` (scipy), or None for no trials."""
    if n <= 0:
        return None
    from scipy.stats import binomtest

    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=0.95, method="wilson")
    return [float(ci.low), float(ci.high)]


def cluster_share_ci(hits: list[bool], clusters: list[str], n: int = 1000, seed: int = 0) -> list[float] | None:
    """Percentile 95% interval of the share of ``hits`` when the trials come in ``clusters`` (e.g. one recording
    placed several times): each resample draws whole clusters."""
    if not hits:
        return None
    keys = sorted(set(clusters))
    index = {k: i for i, k in enumerate(keys)}
    trials, wins = np.zeros(len(keys)), np.zeros(len(keys))
    for hit, c in zip(hits, clusters):
        trials[index[c]] += 1
        wins[index[c]] += hit
    return cluster_ratio_ci(wins, trials, n, seed)


def cluster_ratio_ci(counts: np.ndarray, exposure: np.ndarray, n: int = 1000, seed: int = 0) -> list[float] | None:
    """Percentile 95% interval of ``sum(counts) / sum(exposure)`` over clusters (one entry of each per cluster, e.g.
    events and hours of each speaker in a room): each resample draws whole clusters; draws with no exposure are
    skipped."""
    counts, exposure = np.asarray(counts, dtype=float), np.asarray(exposure, dtype=float)
    if not counts.size:
        return None
    draws = np.random.default_rng(seed).integers(0, counts.size, (n, counts.size))
    total = exposure[draws].sum(1)
    ratios = counts[draws].sum(1)[total > 0] / total[total > 0]
    if not ratios.size:
        return None
    return [float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5))]


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


def sensitivity_at_false_rate(best: np.ndarray, background: np.ndarray, hours: float, false_per_hour: float) -> float:
    """Share of coughs whose best score beats the threshold that lets ``false_per_hour`` background sounds
    through (the ``k``-th highest background score, ``k = floor(false_per_hour * hours)``)."""
    k = int(false_per_hour * hours)
    ranked = np.sort(background)[::-1]
    threshold = ranked[k] if k < ranked.size else -np.inf
    return float(np.mean(best > threshold)) if best.size else float("nan")


def paired_stream_difference(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], hours: float, *,
                             false_per_hour: float, n: int, seed: int) -> dict:
    """Detector ``a`` minus ``b`` on one stream: each is ``(best score per placed cough, score per background
    sound)``, for the same coughs and sounds. Threshold-free ROC-AUC (coughs against background sounds) and
    sensitivity at ``false_per_hour``, with paired bootstrap 95% intervals: each resample draws the same coughs
    and the same background sounds for both detectors."""
    from sklearn.metrics import roc_auc_score

    assert a[0].shape == b[0].shape and a[1].shape == b[1].shape, "both detectors must score the same sounds"

    def figures(best, bg):
        y = np.r_[np.ones(best.size), np.zeros(bg.size)]
        return (float(roc_auc_score(y, np.r_[best, bg])) if best.size and bg.size else float("nan"),
                sensitivity_at_false_rate(best, bg, hours, false_per_hour))

    fa, fb = figures(*a), figures(*b)
    rng, diffs = np.random.default_rng(seed), []
    for _ in range(max(n, 0)):
        i, j = rng.integers(0, a[0].size, a[0].size), rng.integers(0, a[1].size, a[1].size)
        ra, rb = figures(a[0][i], a[1][j]), figures(b[0][i], b[1][j])
        diffs.append((ra[0] - rb[0], ra[1] - rb[1]))
    d = np.array(diffs) if diffs else np.zeros((0, 2))
    out = {}
    for col, name in enumerate(("roc_auc", f"sensitivity_at_{false_per_hour:g}_per_hour")):
        ok = d[:, col][np.isfinite(d[:, col])]
        defined = bool(np.isfinite(fa[col]) and np.isfinite(fb[col]))
        out[name] = {"a": fa[col] if defined else None, "b": fb[col] if defined else None,
                     "diff": fa[col] - fb[col] if defined else None,
                     "ci95": [float(np.percentile(ok, 2.5)), float(np.percentile(ok, 97.5))] if ok.size else None,
                     "share_of_resamples_a_better": float(np.mean(ok > 0)) if ok.size else None}
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
