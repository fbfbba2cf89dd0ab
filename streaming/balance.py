"""The class balance of the pseudo-labels after a micro-batch: a pure function of the predictions
scored so far (in scoring order), the selection policy and, when the pool was carved from a labeled
data set, its hidden labels."""
from __future__ import annotations

import datetime as dt
import re
from typing import Optional, Sequence

import numpy as np
import pyarrow as pa

from pipeline import schema
from streaming.select import Policy


def _mean_by_class(values: np.ndarray, classes: np.ndarray, num_classes: int) -> list[Optional[float]]:
    sums = np.bincount(classes, weights=values, minlength=num_classes)
    counts = np.bincount(classes, minlength=num_classes)
    return [float(s / n) if n else None for s, n in zip(sums, counts)]


def balance_table(batch_id: int, predicted: np.ndarray, confidence: np.ndarray, in_batch: np.ndarray,
                  class_names: Sequence[str], labeled_counts: Sequence[int], policy: Policy,
                  latency_s: float, truth: Optional[np.ndarray] = None) -> pa.Table:
    """One row per class (schema.BALANCE_COLUMNS). ``predicted``/``confidence`` cover every row scored
    up to and including this micro-batch, ``in_batch`` marks this micro-batch's rows and ``truth``
    holds the hidden label of each row (-1: unknown) or is None."""
    c = len(class_names)
    predicted = np.asarray(predicted, dtype=np.int64)
    confidence = np.asarray(confidence, dtype=np.float64)
    keep = policy.select(predicted, confidence, c)
    batch_rows = int(in_batch.sum())
    columns = {
        "batch_id": [batch_id] * c,
        "class_index": list(range(c)),
        "class_name": list(class_names),
        "batch_count": np.bincount(predicted[in_batch], minlength=c).tolist(),
        "cumulative_count": np.bincount(predicted, minlength=c).tolist(),
        "selected_count": np.bincount(predicted[keep], minlength=c).tolist(),
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
        right = np.bincount(predicted[keep & known & (predicted == truth)], minlength=c)
        kept = np.bincount(predicted[keep & known], minlength=c)
        columns["true_count"] = true_count.tolist()
        columns["precision"] = [float(r / k) if k else None for r, k in zip(right, kept)]
        columns["recall"] = [float(r / t) if t else None for r, t in zip(right, true_count)]
    return pa.table(columns, schema=schema.arrow_schema(schema.BALANCE_COLUMNS))


def imbalance_ratio(counts: Sequence[int]) -> float:
    """n_max / n_min of the classes; a class with no pseudo-label at all makes it infinite."""
    counts = np.asarray(counts)
    return float("inf") if counts.min() == 0 else float(counts.max() / counts.min())


def metric_name(name: str) -> str:
    """A class name as MLflow accepts it in a metric key."""
    return re.sub(r"[^0-9A-Za-z_\-. /]", "_", name)


def overall_precision(rows: list[dict]) -> Optional[float]:
    """Share of all kept pseudo-labels that are right, from one micro-batch's balance rows; None
    without hidden truth."""
    if rows[0]["true_count"] is None:
        return None
    kept = sum(r["selected_count"] for r in rows)
    right = sum(r["precision"] * r["selected_count"] for r in rows if r["precision"] is not None)
    return right / kept if kept else 0.0


def balance_metrics(table: pa.Table) -> dict[str, float]:
    """The figures of one micro-batch's balance as MLflow step metrics (same names in every run)."""
    rows = table.to_pylist()
    first = rows[0]
    metrics = {"pl_batch_rows": first["batch_rows"], "pl_rows_total": first["cumulative_rows"],
               "pl_rows_per_s": first["rows_per_s"], "pl_latency_s": first["latency_s"],
               "pl_selected_total": sum(r["selected_count"] for r in rows),
               "pl_imbalance_ratio": imbalance_ratio([r["selected_count"] for r in rows])}
    for r in rows:
        name = metric_name(r["class_name"])
        metrics[f"pl_count_{name}"] = r["cumulative_count"]
        metrics[f"pl_selected_{name}"] = r["selected_count"]
        for key in ("mean_confidence", "precision", "recall"):
            if r[key] is not None:
                metrics[f"pl_{key}_{name}"] = r[key]
    precision = overall_precision(rows)
    if precision is not None:
        metrics["pl_precision"] = precision
    return {k: v for k, v in metrics.items() if np.isfinite(v)}
