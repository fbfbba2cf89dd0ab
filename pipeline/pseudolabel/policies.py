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
  (pipeline.pseudolabel.prior.crest_rates; alpha = ``crest_alpha``, 3 by default).

Every policy can first correct the predictions for the pool's estimated class prior (``adjust``:
``em`` or ``bbse``, see pipeline.pseudolabel.prior): p~ proportional to p (pi_u / pi_labeled)^adjust_tau, then
the policy keeps rows by the corrected class and confidence (``Policy.view``, from the probability
vectors). ``refine = darp`` then refines those soft labels to the estimated class counts (DARP,
Kim et al. 2020, over every row so far) before the policy selects; ``adjust_tau = 0`` uses the
estimate for DARP alone. ``align_t`` > 0 first aligns the predictions to the labeled distribution
at that temperature (``align_labels``, set per self-training round: this project's variant of
CReST+'s alignment, which the published code applies to a FixMatch model's consistency targets, not
to the predictions it selects from). The estimate is a pure function of every row scored so far, so a replay, a restart and
the trainer reading the output all recompute the same one.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple, Optional

import numpy as np

from pipeline.pseudolabel.prior import adjust, align, crest_keep, crest_rates, crest_temperature, darp, estimate_priors
from pipeline.registry import Registry

POLICIES: Registry = Registry("selection policy")
RULES = 2  # the version of the crest and darp rules a policy records


@dataclass(frozen=True)
class Policy:
    name: str
    tau: float = 0.95
    alpha: float = 1.0
    top_k: int = 100
    crest_alpha: float = 3.0
    labeled_counts: tuple = ()  # crest and adjust: the labeled split's class counts
    adjust: str = "none"  # correct the predictions for the pool prior estimated by: none, em, bbse
    adjust_tau: float = 1.0  # the correction's exponent
    confusion: tuple = ()  # bbse: the soft confusion matrix on the held-out labeled split (rows of tuples)
    refine: str = "none"  # darp: refine the (corrected) soft labels to the estimated class counts first
    darp_alpha: float = 2.0  # darp: its pre-step scales the alpha * target_k rows most confident in k
    align_t: float = 0.0  # align_labels: align the predictions to the labeled distribution at temperature t (0: off)
    align_final_t: float = 0.5  # align_labels: the last round's temperature (recorded, so the rounds anneal to it)
    # 2: crest's rates and darp's refinement as their papers' code has them (1: this project's earlier rules)
    rules: int = RULES

    def params(self) -> dict:
        """The policy and only the parameters it uses: what is recorded with the output."""
        used = {"all": (), "threshold": ("tau",), "class_threshold": ("tau", "alpha"),
                "top_k_per_class": ("top_k",), "crest": ("crest_alpha", "labeled_counts")}[self.name]
        if self.adjust != "none":
            used += ("adjust", "adjust_tau", "labeled_counts") + (("confusion",) if self.adjust == "bbse" else ())
        if self.refine != "none":
            used += ("refine", "darp_alpha")
        if self.align_t:
            used += ("align_t", "align_final_t", "labeled_counts")
        if self.name == "crest" or self.refine != "none":
            used += ("rules",)
        used = tuple(dict.fromkeys(used))
        out = {k: v for k, v in asdict(self).items() if k in used}
        return {"name": self.name, **{k: _lists(v) for k, v in out.items()}}

    @classmethod
    def from_params(cls, params: dict) -> "Policy":
        """The policy ``params()`` recorded (lists back to tuples)."""
        renamed = {"crest_final_t": "align_final_t"}  # as outputs written before the rename recorded it
        policy = cls(**{renamed.get(k, k): _tuples(v) for k, v in params.items()})
        if "rules" in policy.params() and params.get("rules", 1) != RULES:  # its rows would not be kept again
            raise ValueError(f"pseudo-labels selected with this project's earlier {policy.name}/{policy.refine} "
                             f"rules (rules {params.get('rules', 1)}); crest and darp are now their published rules: run the "
                             f"stream again into a new output")
        return policy

    def select(self, predicted: np.ndarray, confidence: np.ndarray, num_classes: int) -> np.ndarray:
        return POLICIES.get(self.name)(np.asarray(predicted), np.asarray(confidence), num_classes, self)

    def view(self, probs: np.ndarray, estimates: Optional[dict] = None) -> "View":
        """The pseudo-labels of rows with class probabilities ``probs`` (N x C, every row scored so
        far, in scoring order): corrected for the pool prior when ``adjust`` asks, then selected.
        ``estimates`` may hold the prior estimates already made of these very rows."""

        probs = np.asarray(probs, dtype=np.float64).reshape(len(probs), -1)
        prior = None
        if self.align_t and len(probs):  # align_labels, before anything else
            probs = align(probs, self.labeled_counts, self.align_t)
            estimates = None  # made of the raw rows: the estimate below must be of the aligned ones
        if self.refine != "none" and self.adjust == "none":
            raise ValueError(f"refine={self.refine} aligns the labels to an estimated pool prior: set adjust to em or bbse")
        if self.adjust != "none":
            estimates = estimates if estimates and self.adjust in estimates else estimate_priors(
                probs, self.labeled_counts, self.confusion, only=self.adjust)
            prior = estimates[self.adjust].prior
            if self.adjust_tau:
                probs = adjust(probs, prior, np.asarray(self.labeled_counts, dtype=np.float64), self.adjust_tau)
            if self.refine == "darp" and len(probs):
                probs = darp(probs, prior * len(probs), alpha=self.darp_alpha)
        # float32 like the stored predicted/confidence columns: without a correction, the same values
        probs = probs.astype(np.float32)
        predicted = probs.argmax(axis=1).astype(np.int64) if len(probs) else np.zeros(0, np.int64)
        confidence = probs.max(axis=1) if len(probs) else np.zeros(0, np.float32)
        return View(predicted, confidence, self.select(predicted, confidence, probs.shape[1]), prior)


class View(NamedTuple):
    predicted: np.ndarray  # the (corrected) predicted class of every row
    confidence: np.ndarray  # its (corrected) probability
    keep: np.ndarray  # the policy's keep mask
    prior: Optional[np.ndarray]  # the pool prior the predictions were corrected with, or None


def _lists(v):
    return [_lists(x) for x in v] if isinstance(v, (tuple, list)) else v


def _tuples(v):
    return tuple(_tuples(x) for x in v) if isinstance(v, (tuple, list)) else v


def from_config(cfg, labeled_counts=(), confusion=(), generation: int = 1, generations: int = 1) -> Policy:
    """The policy of ``pseudolabel`` settings ``cfg``; ``generation`` of ``generations``: which
    labelling of the pool this is in the self-training rounds (the alignment temperature of
    ``align_labels`` anneals from 1.0 at the first to ``align_final_t`` at the last, as CReST+'s)."""

    POLICIES.get(cfg.select)  # an unknown name fails here, before any work
    align_t = crest_temperature(generation, generations, cfg.align_final_t) if cfg.align_labels else 0.0
    return Policy(cfg.select, cfg.tau, cfg.alpha, cfg.top_k, cfg.crest_alpha, tuple(labeled_counts), cfg.adjust,
                  cfg.adjust_tau, _tuples(confusion) if cfg.adjust == "bbse" else (), cfg.refine, cfg.darp_alpha,
                  align_t, cfg.align_final_t)


@POLICIES.register("all")
def keep_all(predicted, confidence, num_classes, p: Policy) -> np.ndarray:
    return np.ones(len(predicted), dtype=bool)


@POLICIES.register("threshold")
def threshold(predicted, confidence, num_classes, p: Policy) -> np.ndarray:
    return confidence >= p.tau


def class_thresholds(counts: np.ndarray, tau: float, alpha: float) -> np.ndarray:
    """tau_c = tau * (n_c / n_max) ** alpha of the predictions per class ``counts``."""
    counts = np.asarray(counts, dtype=np.float64)
    return tau * (counts / max(counts.max(), 1.0)) ** alpha


@POLICIES.register("class_threshold")
def class_threshold(predicted, confidence, num_classes, p: Policy) -> np.ndarray:
    return confidence >= class_thresholds(np.bincount(predicted, minlength=num_classes), p.tau, p.alpha)[predicted]


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

    if len(p.labeled_counts) != num_classes:
        raise ValueError(f"crest needs the labeled counts of all {num_classes} classes, got {list(p.labeled_counts)}")
    return crest_keep(predicted, confidence, crest_rates(p.labeled_counts, p.crest_alpha))
