"""Which pseudo-labels to keep, registered by name. A policy is a pure function of the predictions
scored so far (predicted class, confidence, in scoring order) -> a keep mask, so the stream's live
balance and the semi-supervised trainer apply the very same rule to the very same rows.

* ``all``: every prediction is a pseudo-label (Yang & Xu 2020).
* ``threshold``: confidence >= tau (the usual self-training filter).
* ``class_threshold``: tau_c = tau * (n_c / n_max) ** alpha, n_c the number of predictions of class
  c: rarely predicted (tail) classes get lower thresholds, so the pseudo-labels do not collapse onto
  the head classes (in the spirit of FlexMatch's flexible thresholds).
* ``top_k_per_class``: the k most confident predictions of each class (ties: earliest scored).
* ``crest``: CReST (Wei et al. 2021): of the predictions of class c, the floor(|P_c| mu_c) most
  confident, mu_c = (N_(K+1-r(c)) / N_1)^(1/alpha) by the class's rank r(c) in the labeled counts
  (streaming.prior.crest_rates; alpha = ``crest_alpha``, 3 by default).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from pipeline.registry import Registry

POLICIES: Registry = Registry("selection policy")


@dataclass(frozen=True)
class Policy:
    name: str
    tau: float = 0.95
    alpha: float = 1.0
    top_k: int = 100
    crest_alpha: float = 3.0
    labeled_counts: tuple = ()  # crest: the labeled split's class counts

    def params(self) -> dict:
        """The policy and only the parameters it uses: what is recorded with the output."""
        used = {"all": (), "threshold": ("tau",), "class_threshold": ("tau", "alpha"),
                "top_k_per_class": ("top_k",), "crest": ("crest_alpha", "labeled_counts")}[self.name]
        out = {k: v for k, v in asdict(self).items() if k in used}
        return {"name": self.name, **{k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}}

    def select(self, predicted: np.ndarray, confidence: np.ndarray, num_classes: int) -> np.ndarray:
        return POLICIES.get(self.name)(np.asarray(predicted), np.asarray(confidence), num_classes, self)


def from_config(cfg, labeled_counts=()) -> Policy:
    POLICIES.get(cfg.select)  # an unknown name fails here, before any work
    return Policy(cfg.select, cfg.tau, cfg.alpha, cfg.top_k, cfg.crest_alpha, tuple(labeled_counts))


@POLICIES.register("all")
def keep_all(predicted, confidence, num_classes, p: Policy) -> np.ndarray:
    return np.ones(len(predicted), dtype=bool)


@POLICIES.register("threshold")
def threshold(predicted, confidence, num_classes, p: Policy) -> np.ndarray:
    return confidence >= p.tau


def class_thresholds(predicted: np.ndarray, num_classes: int, tau: float, alpha: float) -> np.ndarray:
    counts = np.bincount(predicted, minlength=num_classes).astype(np.float64)
    return tau * (counts / max(counts.max(), 1.0)) ** alpha


@POLICIES.register("class_threshold")
def class_threshold(predicted, confidence, num_classes, p: Policy) -> np.ndarray:
    return confidence >= class_thresholds(predicted, num_classes, p.tau, p.alpha)[predicted]


@POLICIES.register("top_k_per_class")
def top_k_per_class(predicted, confidence, num_classes, p: Policy) -> np.ndarray:
    order = np.lexsort((np.arange(len(predicted)), -confidence))  # most confident first, then scoring order
    rank_in_class = np.empty(len(predicted), dtype=np.int64)
    seen = np.zeros(num_classes, dtype=np.int64)
    for i in order:  # O(n): one pass in confidence order counts each class's rank
        rank_in_class[i] = seen[predicted[i]]
        seen[predicted[i]] += 1
    return rank_in_class < p.top_k


@POLICIES.register("crest")
def crest(predicted, confidence, num_classes, p: Policy) -> np.ndarray:
    from streaming.prior import crest_keep, crest_rates

    if len(p.labeled_counts) != num_classes:
        raise ValueError(f"crest needs the labeled counts of all {num_classes} classes, got {list(p.labeled_counts)}")
    return crest_keep(predicted, confidence, crest_rates(p.labeled_counts, p.crest_alpha))
