"""Distillation loss and learning-rate schedule (pure torch, no training loop)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, *,
            alpha: float, temperature: float) -> dict[str, torch.Tensor]:
    """``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)``, batch-mean.

    Returns every term so each can be logged: ``loss``, ``kl`` (before the T^2 and alpha weights) and ``ce``.
    """
    assert 0.0 <= alpha <= 1.0, f"alpha must be in [0, 1], got {alpha}"
    assert temperature > 0.0, f"temperature must be > 0, got {temperature}"
    log_p_student = F.log_softmax(student_logits / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean")
    ce = F.cross_entropy(student_logits, labels)
    loss = alpha * temperature**2 * kl + (1.0 - alpha) * ce
    return {"loss": loss, "kl": kl, "ce": ce}


def soft_target_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of independent class logits against a tagger's soft scores in [0, 1], batch-mean."""
    assert logits.shape == targets.shape, f"aux logits {tuple(logits.shape)} vs targets {tuple(targets.shape)}"
    return F.binary_cross_entropy_with_logits(logits, targets.clamp(0.0, 1.0))


def feature_penalty(features: torch.Tensor) -> torch.Tensor:
    """Mean squared activation of the student's CNN features (the seed's activation penalty)."""
    return features.float().pow(2).mean()


def warmup_linear(step: int, *, warmup_steps: int, total_steps: int) -> float:
    """LR multiplier: linear warm-up from 0 to 1 over ``warmup_steps``, then linear decay to 0."""
    if total_steps <= 0:
        raise ValueError("total_steps must be positive")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
