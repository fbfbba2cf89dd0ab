"""Evaluation metrics as pure functions of (logits, labels, training class counts)."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

MANY, FEW = 100, 20  # many-shot: > 100 training images; few-shot: < 20 (Liu et al. 2019)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def confusion(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows: true class, columns: predicted class."""
    return np.bincount(labels * num_classes + pred, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def topk_hits(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Per image: is its label among the k highest logits?"""
    k = min(k, logits.shape[1])
    topk = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return (topk == labels[:, None]).any(axis=1)


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    return float(topk_hits(logits, labels, k).mean())


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Guo et al. 2017: sum over equal-width confidence bins of |accuracy - confidence| * share."""
    confidence, pred = probs.max(axis=1), probs.argmax(axis=1)
    correct = (pred == labels).astype(np.float64)
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (confidence > lo) & (confidence <= hi)
        if inside.any():
            ece += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(ece)


def shot_groups(train_counts: Sequence[int]) -> dict[str, np.ndarray]:
    counts = np.asarray(train_counts)
    return {"many": np.flatnonzero(counts > MANY), "medium": np.flatnonzero((counts >= FEW) & (counts <= MANY)),
            "few": np.flatnonzero(counts < FEW)}


def per_class_mean(values: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Mean of ``values`` over the images of each class; NaN for a class with no image."""
    support = np.bincount(labels, minlength=num_classes)
    sums = np.bincount(labels, weights=values.astype(np.float64), minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, sums / support, np.nan)


def evaluate_logits(logits: np.ndarray, labels: np.ndarray, train_counts: Sequence[int],
                    num_classes: Optional[int] = None) -> dict:
    """Every metric the pipeline reports. Per-class accuracy is recall; a class absent from
    ``labels`` gets NaN and is left out of the means."""
    num_classes = num_classes or logits.shape[1]
    pred = logits.argmax(axis=1)
    cm = confusion(pred, labels, num_classes)
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(support > 0, np.diag(cm) / support, np.nan)
        precision = np.diag(cm) / cm.sum(axis=0)
        f1 = np.where(precision + per_class > 0, 2 * precision * per_class / (precision + per_class), 0.0)
    present = (support > 0) | (cm.sum(axis=0) > 0)  # as scikit-learn: classes seen or predicted
    f1 = np.nan_to_num(f1)
    out = {
        "top1": float((pred == labels).mean()),
        "top5": topk_accuracy(logits, labels, 5),
        "balanced_accuracy": float(np.nanmean(per_class)),
        "macro_f1": float(f1[present].mean()),
        "ece": expected_calibration_error(softmax(logits), labels),
        "per_class_accuracy": per_class.tolist(),
        "per_class_top5": per_class_mean(topk_hits(logits, labels, 5), labels, num_classes).tolist(),
        "confusion": cm.tolist(),
    }
    for group, classes in shot_groups(train_counts).items():
        values = per_class[classes]
        values = values[~np.isnan(values)]
        out[f"{group}_accuracy"] = float(values.mean()) if len(values) else float("nan")
    return out
