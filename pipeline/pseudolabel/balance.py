"""The class balance of the pseudo-labels after a micro-batch: a pure function of the predictions
scored so far (in scoring order), the selection policy and, when the pool was carved from a labeled
data set, its hidden labels; the stream computes it from its bounded state (pipeline.pseudolabel.state)."""
from __future__ import annotations

import dataclasses
import datetime as dt
import math
from typing import Optional, Sequence

import numpy as np
import pyarrow as pa

from pipeline import schema
from pipeline.pseudolabel.policies import Policy
from pipeline.pseudolabel.prior import Estimate, bbse_of_mean, crest_rates, divergences, estimate_priors
from pipeline.pseudolabel.state import StreamState, kept_counts


def balance_table(batch_id: int, predicted: np.ndarray, confidence: np.ndarray, in_batch: np.ndarray,
                  class_names: Sequence[str], labeled_counts: Sequence[int], policy: Policy,
                  latency_s: float, truth: Optional[np.ndarray] = None, probs: Optional[np.ndarray] = None,
                  confusion=()) -> pa.Table:
    """One row per class (schema.BALANCE_COLUMNS), recomputed from every row. ``predicted``/``confidence``
    (and ``probs``, the probability vectors) cover every row scored up to and including this
    micro-batch, ``in_batch`` marks this micro-batch's rows and ``truth`` holds the hidden label of
    each row (-1: unknown) or is None. With ``probs`` the pool prior is estimated (EM; BBSE given the
    held-out ``confusion``) and the policy's correction, if any, applied before it selects: precision
    and recall are those of the labels it keeps, by their corrected class. The stream computes the
    same table from its bounded state (``state_balance``)."""

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
    counts = {"batch_count": np.bincount(predicted[in_batch], minlength=c),
              "batch_confidence_sum": np.bincount(predicted[in_batch], weights=confidence[in_batch], minlength=c),
              "cumulative_count": np.bincount(predicted, minlength=c),
              "confidence_sum": np.bincount(predicted, weights=confidence, minlength=c),
              "selected_count": np.bincount(labels[keep], minlength=c),
              "adjusted_count": np.bincount(labels, minlength=c)}
    if truth is not None:
        truth = np.asarray(truth, dtype=np.int64)
        known = truth >= 0
        counts["true_count"] = np.bincount(truth[known], minlength=c)
        counts["right"] = np.bincount(labels[keep & known & (labels == truth)], minlength=c)
    return _table(batch_id, class_names, labeled_counts, counts, estimates, int(in_batch.sum()), len(predicted),
                  latency_s, sample_rows=None)


def state_balance(batch_id: int, state: StreamState, batch_predicted: np.ndarray, batch_confidence: np.ndarray,
                  class_names: Sequence[str], labeled_counts: Sequence[int], policy: Policy, latency_s: float,
                  confusion=(), em: Optional[Estimate] = None) -> pa.Table:
    """``balance_table`` from the stream's bounded state after micro-batch ``batch_id`` (whose rows
    are ``batch_predicted``/``batch_confidence``): the very same table while the state's sample
    holds every row, then exact counters and the estimates pipeline.pseudolabel.state describes (EM's
    prior: ``em``, as the stream carries it from batch to batch, or EM run to convergence on the sample)."""
    if state.complete:
        return balance_table(batch_id, state.s_predicted, state.s_confidence, state.s_batch == batch_id,
                             class_names, labeled_counts, policy, latency_s,
                             state.s_truth if state.has_truth else None, state.s_probs, confusion)
    c = len(class_names)
    scale = state.rows / len(state.s_key)
    estimates = {"em": em} if em is not None else estimate_priors(state.s_probs, labeled_counts, only="em")
    if len(confusion):
        estimates["bbse"] = bbse_of_mean(state.probs_sum / state.rows, confusion)  # exact: its statistic is kept
    batch_predicted = np.asarray(batch_predicted, dtype=np.int64)
    counts = {"batch_count": np.bincount(batch_predicted, minlength=c),
              "batch_confidence_sum": np.bincount(batch_predicted, weights=np.asarray(batch_confidence, np.float64),
                                                  minlength=c),
              "cumulative_count": state.count, "confidence_sum": state.confidence_sum}
    if policy.adjust != "none" or policy.align_t:  # the policy selects from corrected rows: the sample's
        if policy.name in ("top_k_per_class", "crest"):  # counts of the whole pool: from the corrected counts
            view = dataclasses.replace(policy, name="all").view(state.s_probs, estimates)
            adjusted = np.bincount(view.predicted, minlength=c) * scale
            kept = (np.minimum(adjusted, policy.top_k) if policy.name == "top_k_per_class"
                    else np.floor(adjusted * crest_rates(policy.labeled_counts, policy.crest_alpha)))
            right = _right_among_top(view.predicted, view.confidence, view.predicted == state.s_truth, kept / scale,
                                     c) * scale
        else:
            view = policy.view(state.s_probs, estimates)
            adjusted = np.bincount(view.predicted, minlength=c) * scale
            kept = np.bincount(view.predicted[view.keep], minlength=c) * scale
            right = np.bincount(view.predicted[view.keep & (view.predicted == state.s_truth)], minlength=c) * scale
        counts["adjusted_count"] = np.rint(adjusted)
        counts["selected_count"] = np.rint(kept)
        right = right if state.has_truth else None
    else:
        counts["adjusted_count"] = state.count
        kept, right = kept_counts(state, policy)
        counts["selected_count"] = np.rint(kept)
    if state.has_truth:
        counts["true_count"], counts["right"] = state.true_count, right
    return _table(batch_id, class_names, labeled_counts, counts, estimates, len(batch_predicted), state.rows,
                  latency_s, sample_rows=len(state.s_key))


def _right_among_top(predicted: np.ndarray, confidence: np.ndarray, hit: np.ndarray, take: np.ndarray,
                     num_classes: int) -> np.ndarray:
    """Per class, the right rows among its ``take`` (fractional) most confident rows of the sample
    (ties: earliest first): the whole rows, then the share of the next one."""
    order = np.lexsort((np.arange(len(predicted)), -np.asarray(confidence, np.float64), predicted))
    starts = np.searchsorted(predicted[order], np.arange(num_classes + 1))
    right = np.zeros(num_classes)
    for c in range(num_classes):
        hits = hit[order[starts[c]:starts[c + 1]]]
        whole = min(int(take[c]), len(hits))
        right[c] = hits[:whole].sum() + (take[c] - whole) * hits[whole] if whole < len(hits) else hits.sum()
    return right


def with_latency(table: pa.Table, latency_s: float) -> pa.Table:
    """The balance with the micro-batch's latency (and rows/s) set, once everything it times is done."""
    rows = table.column("batch_rows")[0].as_py() if table.num_rows else 0
    for name, value in (("latency_s", float(latency_s)), ("rows_per_s", rows / latency_s if latency_s > 0 else 0.0)):
        i = table.schema.get_field_index(name)
        table = table.set_column(i, table.schema.field(i), pa.array([value] * table.num_rows, pa.float64()))
    return table


def _table(batch_id: int, class_names: Sequence[str], labeled_counts: Sequence[int], counts: dict,
           estimates: dict, batch_rows: int, rows: int, latency_s: float, sample_rows: Optional[int]) -> pa.Table:
    c = len(class_names)
    em, bbse = estimates.get("em"), estimates.get("bbse")
    ints = lambda key: [int(n) for n in counts[key]]  # noqa: E731
    columns = {
        "batch_id": [batch_id] * c,
        "class_index": list(range(c)),
        "class_name": list(class_names),
        "batch_count": ints("batch_count"),
        "cumulative_count": ints("cumulative_count"),
        "selected_count": ints("selected_count"),
        "adjusted_count": ints("adjusted_count"),
        "prior_em": [None] * c if em is None else em.prior.tolist(),
        "prior_bbse": [None] * c if bbse is None else bbse.prior.tolist(),
        "em_iterations": [None if em is None else em.iterations] * c,
        "bbse_condition": [None if bbse is None else bbse.condition] * c,
        "batch_mean_confidence": _means(counts["batch_confidence_sum"], counts["batch_count"]),
        "mean_confidence": _means(counts["confidence_sum"], counts["cumulative_count"]),
        "labeled_count": [int(n) for n in labeled_counts],
        "true_count": [None] * c, "precision": [None] * c, "recall": [None] * c,
        "batch_rows": [batch_rows] * c,
        "cumulative_rows": [rows] * c,
        "rows_per_s": [batch_rows / latency_s if latency_s > 0 else 0.0] * c,
        "latency_s": [float(latency_s)] * c,
        "committed_at": [dt.datetime.now(dt.timezone.utc)] * c,
        "exact": [sample_rows is None] * c,
        "sample_rows": [sample_rows] * c,
    }
    if "true_count" in counts:
        kept, right, true = counts["selected_count"], counts["right"], counts["true_count"]
        columns["true_count"] = ints("true_count")
        if right is not None:
            columns["precision"] = _means(right, kept)
            columns["recall"] = _means(right, true)
    return pa.table(columns, schema=schema.arrow_schema(schema.BALANCE_COLUMNS))


def _means(sums, counts) -> list[Optional[float]]:
    return [float(s / n) if n else None for s, n in zip(sums, counts)]


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


def balance_metrics(table: pa.Table, per_class: bool = True) -> dict[str, float]:
    """The figures of one micro-batch's balance as MLflow step metrics (same names in every run);
    without ``per_class`` only those of the whole pool (the balance files keep every class's)."""
    rows = table.to_pylist()
    first = rows[0]
    metrics = {"pl_batch_rows": first["batch_rows"], "pl_rows_total": first["cumulative_rows"],
               "pl_rows_per_s": first["rows_per_s"], "pl_latency_s": first["latency_s"],
               "pl_selected_total": sum(r["selected_count"] for r in rows),
               "pl_imbalance_ratio": imbalance_ratio([r["selected_count"] for r in rows])}
    for r in rows if per_class else ():  # by class index: any class name is valid (stream.json maps them to names)
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
