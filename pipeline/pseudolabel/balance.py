"""The class balance of the pseudo-labels after a micro-batch: a pure function of the predictions
scored so far (in scoring order), the selection policy and, when the pool was carved from a labeled
data set, its hidden labels."""
from __future__ import annotations

import math

import datetime as dt
from typing import Optional, Sequence

import numpy as np
import pyarrow as pa

from pipeline import schema
from pipeline.pseudolabel.policies import Policy
from pipeline.pseudolabel.prior import divergences, estimate_priors


def _mean_by_class(values: np.ndarray, classes: np.ndarray, num_classes: int) -> list[Optional[float]]:
    sums = np.bincount(classes, weights=values, minlength=num_classes)
    counts = np.bincount(classes, minlength=num_classes)
    return [float(s / n) if n else None for s, n in zip(sums, counts)]


def balance_table(batch_id: int, predicted: np.ndarray, confidence: np.ndarray, in_batch: np.ndarray,
                  class_names: Sequence[str], labeled_counts: Sequence[int], policy: Policy,
                  latency_s: float, truth: Optional[np.ndarray] = None, probs: Optional[np.ndarray] = None,
                  confusion=()) -> pa.Table:
    """One row per class (schema.BALANCE_COLUMNS). ``predicted``/``confidence`` (and ``probs``, the
    probability vectors) cover every row scored up to and including this micro-batch, ``in_batch``
    marks this micro-batch's rows and ``truth`` holds the hidden label of each row (-1: unknown) or
    is None. With ``probs`` the pool prior is estimated (EM; BBSE given the held-out ``confusion``)
    and the policy's correction, if any, applied before it selects: precision and recall are those
    of the labels it keeps, by their corrected class."""

    c = len(class_names)
    predicted = np.asarray(predicted, dtype=np.int64)
    confidence = np.asarray(confidence, dtype=np.float64)
    estimates = {}
    if probs is not None:
        estimates = estimate_priors(probs, labeled_counts, confusion)
        view = policy.view(probs, estimates)
        labels, keep = view.predicted, view.keep
    elif policy.adjust != "none":
        raise ValueError(f"policy {policy.name} corrects for the pool prior ({policy.adjust}): it needs the probabilities")
    else:
        labels, keep = predicted, policy.select(predicted, confidence, c)
    batch_rows = int(in_batch.sum())
    em, bbse = estimates.get("em"), estimates.get("bbse")
    columns = {
        "batch_id": [batch_id] * c,
        "class_index": list(range(c)),
        "class_name": list(class_names),
        "batch_count": np.bincount(predicted[in_batch], minlength=c).tolist(),
        "cumulative_count": np.bincount(predicted, minlength=c).tolist(),
        "selected_count": np.bincount(labels[keep], minlength=c).tolist(),
        "adjusted_count": np.bincount(labels, minlength=c).tolist(),
        "prior_em": [None] * c if em is None else em.prior.tolist(),
        "prior_bbse": [None] * c if bbse is None else bbse.prior.tolist(),
        "em_iterations": [None if em is None else em.iterations] * c,
        "bbse_condition": [None if bbse is None else bbse.condition] * c,
        "batch_mean_confidence": _mean_by_class(confidence[in_batch], predicted[in_batch], c),
        "mean_confidence": _mean_by_class(confidence, predicted, c),
        "labeled_count": [int(n) for n in labeled_counts],
        "true_count": [None] * c, "precision": [None] * c, "recall": [None] * c,
        "batch_rows": [batch_rows] * c,
        "cumulative_rows": [len(predicted)] * c,
        "rows_per_s": [batch_rows / latency_s if latency_s > 0 else 0.0] * c,
        "latency_s": [float(latency_s)] * c,
        "committed_at": [dt.datetime.now(dt.timezone.utc)] * c,
    }
    if truth is not None:
        truth = np.asarray(truth, dtype=np.int64)
        known = truth >= 0
        true_count = np.bincount(truth[known], minlength=c)
        right = np.bincount(labels[keep & known & (labels == truth)], minlength=c)
        kept = np.bincount(labels[keep & known], minlength=c)
        columns["true_count"] = true_count.tolist()
        columns["precision"] = [float(r / k) if k else None for r, k in zip(right, kept)]
        columns["recall"] = [float(r / t) if t else None for r, t in zip(right, true_count)]
    return pa.table(columns, schema=schema.arrow_schema(schema.BALANCE_COLUMNS))


def imbalance_ratio(counts: Sequence[int]) -> float:
    """n_max / n_min of the classes; a class with no pseudo-label at all makes it infinite."""
    counts = np.asarray(counts)
    return float("inf") if counts.min() == 0 else float(counts.max() / counts.min())


def overall_precision(rows: list[dict]) -> Optional[float]:
    """Share of all kept pseudo-labels that are right, from one micro-batch's balance rows; None
    without hidden truth."""
    if rows[0]["true_count"] is None:
        return None
    kept = sum(r["selected_count"] for r in rows)
    right = sum(r["precision"] * r["selected_count"] for r in rows  # a class with none kept has no precision
                if r["selected_count"] and r["precision"] is not None and not math.isnan(r["precision"]))
    return right / kept if kept else 0.0


def balance_metrics(table: pa.Table) -> dict[str, float]:
    """The figures of one micro-batch's balance as MLflow step metrics (same names in every run)."""
    rows = table.to_pylist()
    first = rows[0]
    metrics = {"pl_batch_rows": first["batch_rows"], "pl_rows_total": first["cumulative_rows"],
               "pl_rows_per_s": first["rows_per_s"], "pl_latency_s": first["latency_s"],
               "pl_selected_total": sum(r["selected_count"] for r in rows),
               "pl_imbalance_ratio": imbalance_ratio([r["selected_count"] for r in rows])}
    for r in rows:  # by class index: any class name is valid (stream.json maps indices to names)
        name = r["class_index"]
        metrics[f"pl_count_{name}"] = r["cumulative_count"]
        metrics[f"pl_selected_{name}"] = r["selected_count"]
        for key in ("adjusted_count", "prior_em", "prior_bbse", "mean_confidence", "precision", "recall"):
            if r.get(key) is not None:
                metrics[f"pl_{key.removesuffix('_count')}_{name}"] = r[key]
    precision = overall_precision(rows)
    if precision is not None:
        metrics["pl_precision"] = precision
    if first.get("bbse_condition") is not None:
        metrics["pl_bbse_condition"] = first["bbse_condition"]
    metrics.update(prior_errors(rows))
    return {k: v for k, v in metrics.items() if np.isfinite(v)}


def prior_errors(rows: list[dict]) -> dict[str, float]:
    """How far the pool-prior estimates (EM, BBSE, and the labeled split's distribution that plain
    self-training assumes) are from the hidden truth (L1 and KL(truth || estimate)), and the KL of
    the kept labels' distribution from the EM estimate: {metric: value}, from one batch's rows."""

    out = {}
    kept = np.array([r["selected_count"] for r in rows], dtype=np.float64)
    em = [r.get("prior_em") for r in rows]
    if None not in em and kept.sum() > 0:
        out["pl_kl_selected_em"] = divergences(kept, np.array(em))[1]
    if rows[0]["true_count"] is None or sum(r["true_count"] for r in rows) == 0:
        return out
    truth = np.array([r["true_count"] for r in rows], dtype=np.float64)
    for name, key in (("em", "prior_em"), ("bbse", "prior_bbse"), ("labeled", "labeled_count")):
        estimate = [r.get(key) for r in rows]
        if None not in estimate:
            out[f"pl_prior_l1_{name}"], out[f"pl_prior_kl_{name}"] = divergences(truth, np.array(estimate, dtype=float))
    return out
