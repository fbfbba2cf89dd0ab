"""Distribution-aware pseudo-labels, pure functions of probability tables (numpy, float64):
estimating the unlabeled pool's class prior, correcting the predictions for it, and re-balancing
which pseudo-labels are kept.

* ``em_prior``: EM prior correction (Saerens et al. 2002), pi <- mean_x normalise(p(x) pi / pi_train).
* ``bbse_prior``: black-box shift estimation (Lipton et al. 2018): q = C^-1 mean_x p(x), C the soft
  confusion matrix (C_ij = mean of p_i(x) over held-out labeled images of class j), with cond(C).
* ``adjust``: logit-adjusted probabilities p~ proportional to p (pi_u / pi_train)^tau.
* ``crest_rates``: CReST's per-class keep rates mu_c = (N_(K+1-r(c)) / N_1)^(1/alpha) (Wei et al. 2021).
* ``align``: CReST+'s distribution alignment to the labeled distribution at temperature t.
* ``darp``: DARP's refinement of soft pseudo-labels to target class counts (Kim et al. 2020).
Estimators are registered by name (``PRIOR_ESTIMATORS``)."""
from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

from pipeline.registry import Registry

PRIOR_ESTIMATORS: Registry = Registry("prior estimator")
EPS = 1e-12


def _normalise_rows(p: np.ndarray) -> np.ndarray:
    return p / np.maximum(p.sum(axis=1, keepdims=True), EPS)


def _prior(v: np.ndarray) -> np.ndarray:
    v = np.clip(np.asarray(v, dtype=np.float64), 0.0, None)
    return v / max(v.sum(), EPS)


class Estimate(NamedTuple):
    prior: np.ndarray  # the estimated class prior of the pool (sums to 1)
    iterations: int  # EM: iterations run; BBSE: 0
    condition: float  # BBSE: condition number of the confusion matrix; EM: nan


@PRIOR_ESTIMATORS.register("em")
def em_prior(probs: np.ndarray, train_prior: np.ndarray, tol: float = 1e-8, max_iter: int = 1000,
             start: Optional[np.ndarray] = None, **_) -> Estimate:
    """Saerens et al. (2002): the posteriors ``probs`` were calibrated under ``train_prior``; re-weight
    them by pi / pi_train, average, repeat until the prior stops moving (from ``start``, by default
    ``train_prior``)."""
    probs, train_prior = np.asarray(probs, dtype=np.float64), _prior(train_prior)
    pi = train_prior.copy() if start is None else _prior(start)
    for it in range(1, max_iter + 1):
        new = _normalise_rows(probs * (pi / np.maximum(train_prior, EPS))).mean(axis=0)
        if np.abs(new - pi).max() < tol:
            return Estimate(new, it, float("nan"))
        pi = new
    return Estimate(pi, max_iter, float("nan"))


def confusion(val_probs: np.ndarray, val_labels: np.ndarray, num_classes: int) -> np.ndarray:
    """C[i, j] = mean over held-out images of class j of p_i(x): columns sum to 1."""
    val_probs, val_labels = np.asarray(val_probs, dtype=np.float64), np.asarray(val_labels)
    c = np.zeros((num_classes, num_classes))
    for j in range(num_classes):
        rows = val_probs[val_labels == j]
        if len(rows) == 0:
            raise ValueError(f"BBSE needs held-out images of every class; class {j} has none")
        c[:, j] = rows.mean(axis=0)
    return c


@PRIOR_ESTIMATORS.register("bbse")
def bbse_prior(probs: np.ndarray, train_prior: Optional[np.ndarray] = None, *, val_probs: np.ndarray,
               val_labels: np.ndarray, **_) -> Estimate:
    """Lipton et al. (2018), soft form: mean_x p(x) over the pool = C q, solved by least squares,
    negative entries clipped, renormalised."""
    probs = np.asarray(probs, dtype=np.float64)
    return estimate_priors(probs, (), confusion(val_probs, val_labels, probs.shape[1]), only="bbse")["bbse"]


def estimate_priors(probs: np.ndarray, labeled_counts, confusion=(), only: Optional[str] = None) -> dict:
    """{estimator name: Estimate} of the pool prior from its rows' probabilities: EM always, BBSE
    when the held-out ``confusion`` matrix is known (``only``: just that one)."""
    probs = np.asarray(probs, dtype=np.float64)
    out = {}
    if len(probs) == 0:
        return out
    if only in (None, "em"):
        out["em"] = em_prior(probs, np.asarray(labeled_counts, dtype=np.float64))
    if only in (None, "bbse") and len(confusion):
        out["bbse"] = bbse_of_mean(probs.mean(axis=0), confusion)
    if only is not None and only not in out:
        raise ValueError(f"cannot estimate the pool prior by {only!r}" +
                         (": BBSE needs the confusion matrix of a held-out labeled split" if only == "bbse" else ""))
    return out


def bbse_of_mean(mean_probs: np.ndarray, confusion) -> Estimate:
    """BBSE from the pool's mean prediction alone (its sufficient statistic): C q = mean, by least
    squares, negative entries clipped, renormalised."""
    c = np.asarray(confusion, dtype=np.float64)
    q, *_ = np.linalg.lstsq(c, np.asarray(mean_probs, dtype=np.float64), rcond=None)
    return Estimate(_prior(q), 0, float(np.linalg.cond(c)))


def divergences(truth: np.ndarray, estimate: np.ndarray) -> tuple[float, float]:
    """(L1 distance, KL(truth || estimate)) of two class distributions."""
    t, e = _prior(truth), _prior(estimate)
    kl = float(np.sum(np.where(t > 0, t * np.log(np.maximum(t, EPS) / np.maximum(e, EPS)), 0.0)))
    return float(np.abs(t - e).sum()), kl


def adjust(probs: np.ndarray, pool_prior: np.ndarray, train_prior: np.ndarray, tau: float = 1.0) -> np.ndarray:
    """Predictions corrected for the pool's prior: p~ proportional to p * (pi_u / pi_train)^tau."""
    ratio = (_prior(pool_prior) + EPS) / (_prior(train_prior) + EPS)
    return _normalise_rows(np.asarray(probs, dtype=np.float64) * ratio ** tau)


def crest_rates(labeled_counts, alpha: float = 3.0) -> np.ndarray:
    """CReST (Wei et al. 2021) as google-research/crest computes it: class c, the r(c)-th most frequent
    in the labeled set (1 = the head; ties by class index), keeps the share mu_c = (N_(K+1-r(c)) /
    N_1)^(1/alpha) of its pseudo-labels, with N_j / N_1 = rho^(-(j-1)/(K-1)) of the nominal exponential
    profile at the labeled set's ratio rho = N_1 / N_K (the published code draws the rates from its
    imbalance ratio, not from the measured counts, which are that profile rounded down): the head keeps
    the least, the rarest class all."""
    counts = np.asarray(labeled_counts, dtype=np.float64)
    k = len(counts)
    if k < 2 or counts.min() <= 0:
        raise ValueError(f"crest needs at least 2 classes with labeled images, got counts {counts.tolist()}")
    rank = np.empty(k, dtype=np.int64)  # 1-based rank by count, ties by class index
    rank[np.argsort(-counts, kind="stable")] = np.arange(1, k + 1)
    rho = counts.max() / counts.min()
    return (rho ** (-(k - rank) / (k - 1))) ** (1.0 / alpha)


def crest_keep(predicted: np.ndarray, confidence: np.ndarray, rates: np.ndarray) -> np.ndarray:
    """Per predicted class c, the floor(|P_c| mu_c) most confident (ties: earliest scored)."""
    predicted, confidence = np.asarray(predicted), np.asarray(confidence)
    keep = np.zeros(len(predicted), dtype=bool)
    for c, rate in enumerate(rates):
        rows = np.flatnonzero(predicted == c)
        if len(rows):
            order = rows[np.lexsort((rows, -confidence[rows]))]
            keep[order[:int(np.floor(len(rows) * rate))]] = True
    return keep


def crest_temperature(round_: int, rounds: int, final: float = 0.5) -> float:
    """CReST+'s alignment temperature, annealed linearly from 1.0 (round 1) to ``final`` (last)."""
    return 1.0 if rounds <= 1 else 1.0 - (1.0 - final) * (round_ - 1) / (rounds - 1)


def align(probs: np.ndarray, labeled_counts, t: float) -> np.ndarray:
    """CReST+'s distribution alignment: scale the predictions so their mean follows the labeled
    distribution flattened by temperature t (pi_l^t, normalised)."""
    probs = np.asarray(probs, dtype=np.float64)
    target = _prior(np.asarray(labeled_counts, dtype=np.float64) ** t)
    return _normalise_rows(probs * (target / np.maximum(probs.mean(axis=0), EPS)))


def darp(probs: np.ndarray, target_counts: np.ndarray, alpha: float = 2.0, iterations: int = 10,
         tol: float = 0.1, newton_steps: int = 30) -> np.ndarray:
    """DARP as its authors publish it (Kim et al. 2020, bbuing9/DARP: ``estimate_pseudo`` then
    ``opt_solver``): soft pseudo-labels whose rows sum to 1 and whose columns approach
    ``target_counts`` (counts over this pool; DARP's own scripts use the labeled distribution or an
    estimate), each row moved least where it was confident (weight w_m = 1 / H(x_m)).

    1. Truncation: per class k only the int(alpha * q_k) rows most confident in k keep their entry,
       scaled by (q_k + 1e-6) / (their sum + 1e-6); every other entry becomes 0, then each row is
       (x + 1e-6) / its sum.
    2. ``iterations`` rounds of: the row multipliers X_m = 1 / sum_k (x_mk / e) Y_mk; per class the root
       nu_k of sum_m (x_mk / e) X_m exp(-nu_k / w_m) = q_k by the secant method (scipy's ``newton``
       without a derivative) from the last round's root (0 at first), to ``tol``, in at most
       ``newton_steps`` steps; Y_mk = exp(-nu_k / w_m). Entropies take log(x + 1e-6).
    3. The result (x_mk / e) X_m Y_mk after a last row step.
    A class with a target of 0 (an estimate can give one, DARP's labeled counts never do) gets no
    mass: its root does not exist."""
    from scipy.optimize import newton

    x = np.asarray(probs, dtype=np.float64)
    q = np.asarray(target_counts, dtype=np.float64)
    n, k = x.shape
    keep = np.zeros_like(x)
    for c in range(k):
        top = np.argsort(-x[:, c], kind="stable")[:int(alpha * q[c])]
        keep[top, c] = (q[c] + 1e-6) / (x[top, c].sum() + 1e-6)
    x = (x * keep + 1e-6) / (x * keep + 1e-6).sum(axis=1, keepdims=True)
    w = 1.0 / (-(x * np.log(x + 1e-6)).sum(axis=1))
    a = x / np.e
    nu, col = np.zeros(k), np.exp(-1.0 / w)[:, None] * np.ones((1, k))  # nu starts at 1 for the first row step
    for _ in range(iterations):
        row = 1.0 / (a * col).sum(axis=1)
        for c in range(k):
            if q[c] <= 0:
                nu[c] = np.inf
                continue
            try:
                nu[c] = newton(lambda v, c=c: float((a[:, c] * row * np.exp(-v / w)).sum() - q[c]), nu[c],
                               maxiter=newton_steps, tol=tol)
            except RuntimeError as e:  # scipy's "failed to converge", as the published code fails
                raise ValueError(f"darp: the root of class {c} (target {q[c]:.1f}) did not converge: {e}") from None
        col = np.exp(-nu[None, :] / w[:, None])
    row = 1.0 / (a * col).sum(axis=1)
    return a * row[:, None] * col
