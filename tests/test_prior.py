"""Distribution-aware pseudo-label parts on synthetic probability tables with a known pool prior:
EM and BBSE recover it, the adjusted predictions follow it, CReST's rates follow their formula,
DARP meets its constraints and moves the confident rows least."""
import numpy as np
import pytest

from pipeline.pseudolabel.prior import (PRIOR_ESTIMATORS, adjust, align, bbse_prior, crest_keep, crest_rates,
                             crest_temperature, darp, em_prior)

K = 5
TRAIN_PRIOR = np.array([0.5, 0.25, 0.13, 0.08, 0.04])


def draw(prior, n, rng, separation=2.0):
    """Labels from ``prior``, features from unit Gaussians at separation * e_y, and the exact
    posteriors of a model calibrated under TRAIN_PRIOR."""
    y = rng.choice(K, size=n, p=prior)
    x = rng.normal(size=(n, K)) + separation * np.eye(K)[y]
    log_lik = -0.5 * ((x[:, None, :] - separation * np.eye(K)[None]) ** 2).sum(-1)
    post = np.exp(log_lik - log_lik.max(1, keepdims=True)) * TRAIN_PRIOR
    return post / post.sum(1, keepdims=True), y


@pytest.mark.parametrize("pool_prior", [TRAIN_PRIOR, np.full(K, 0.2), TRAIN_PRIOR[::-1]],
                         ids=["same", "uniform", "reversed"])
def test_em_and_bbse_recover_a_known_pool_prior(pool_prior):
    rng = np.random.default_rng(0)
    pool, _ = draw(pool_prior, 20_000, rng)
    val, val_y = draw(np.full(K, 0.2), 5_000, rng)  # a held-out labeled split
    naive = pool.mean(0)  # what assuming "pool = training prior" gives
    em = em_prior(pool, TRAIN_PRIOR)
    bbse = bbse_prior(pool, TRAIN_PRIOR, val_probs=val, val_labels=val_y)
    for estimate in (em, bbse):
        assert estimate.prior.sum() == pytest.approx(1.0)
        assert np.abs(estimate.prior - pool_prior).sum() < 0.04
    assert 1.0 <= bbse.condition < 20 and em.iterations > 1
    if pool_prior is not TRAIN_PRIOR:
        assert np.abs(em.prior - pool_prior).sum() < 0.5 * np.abs(naive - pool_prior).sum()
    assert set(PRIOR_ESTIMATORS) == {"em", "bbse"}


def test_adjusted_predictions_follow_the_pool_prior():
    rng = np.random.default_rng(1)
    uniform = np.full(K, 0.2)
    pool, y = draw(uniform, 20_000, rng)
    fixed = adjust(pool, uniform, TRAIN_PRIOR, tau=1.0)
    assert np.allclose(fixed.sum(1), 1)
    before = np.bincount(pool.argmax(1), minlength=K) / len(y)
    after = np.bincount(fixed.argmax(1), minlength=K) / len(y)
    assert np.abs(after - uniform).sum() < 0.5 * np.abs(before - uniform).sum()  # less head-biased
    assert (fixed.argmax(1) == y).mean() > (pool.argmax(1) == y).mean()  # and more often right
    assert np.allclose(adjust(pool, TRAIN_PRIOR, TRAIN_PRIOR), pool)  # no shift: no change


def test_crest_rates_follow_the_formula_by_rank_not_by_class_index():
    counts = [50, 1500, 140, 500, 15]  # not sorted: ranks 4, 1, 3, 2, 5
    rates = crest_rates(counts, alpha=3)
    rank = {1500: 1, 500: 2, 140: 3, 50: 4, 15: 5}  # rho = 100: N_j / N_1 = 100^(-(j-1)/4) nominally
    want = [(100 ** (-(5 - rank[c]) / 4)) ** (1 / 3) for c in counts]  # (N_(K+1-r) / N_1)^(1/alpha)
    assert rates == pytest.approx(want)
    assert rates[4] == pytest.approx(1.0) and rates[1] == pytest.approx((15 / 1500) ** (1 / 3))


def test_crest_keeps_the_most_confident_floor_share_per_predicted_class():
    predicted = np.array([0, 0, 0, 0, 1, 1, 1])
    confidence = np.array([0.9, 0.2, 0.8, 0.5, 0.3, 0.9, 0.6])
    keep = crest_keep(predicted, confidence, np.array([0.5, 1.0]))
    assert keep.tolist() == [True, False, True, False, True, True, True]  # floor(4 * .5) = 2 of class 0


def test_crest_plus_anneals_the_alignment_temperature():
    assert [crest_temperature(r, 3) for r in (1, 2, 3)] == pytest.approx([1.0, 0.75, 0.5])
    rng = np.random.default_rng(2)
    pool, _ = draw(TRAIN_PRIOR, 5_000, rng)
    counts = [500, 250, 130, 80, 40]  # the labeled distribution = the pool's here
    uniform = np.full(K, 0.2)
    flat = align(pool, counts, t=0.0)  # t = 0: one alignment step towards uniform
    assert np.allclose(flat.sum(1), 1)
    assert np.abs(flat.mean(0) - uniform).sum() < 0.7 * np.abs(pool.mean(0) - uniform).sum()
    same = align(pool, counts, t=1.0)  # t = 1: towards the labeled distribution, where the mean already is
    assert np.abs(same - pool).max() < 0.05


def published_darp(probs, q, alpha=2.0, iter_t=10, th=0.1):
    """bbuing9/DARP, transcribed in plain loops: estimate_pseudo's truncation and the scaling of
    training_functions.py, then opt_solver (scipy's newton without a derivative: the secant method)."""
    import math

    from scipy import optimize

    n, k = probs.shape
    scale = np.zeros((n, k))
    for i in range(k):
        chosen = sorted(range(n), key=lambda m: -probs[m, i])[:int(alpha * q[i])]
        total = sum(probs[m, i] for m in chosen)
        for m in chosen:
            scale[m, i] = (q[i] + 1e-6) / (total + 1e-6)
    x = probs * scale + 1e-6
    x = x / x.sum(axis=1, keepdims=True)
    w = 1 / (-1 * x * np.log(x + 1e-6)).sum(axis=1)
    a_e = x / math.e
    y = np.exp(-1 * np.ones((1, k)) / w.reshape(-1, 1))
    prev = np.zeros(k)
    for _ in range(iter_t):
        big_x = 1 / np.sum(a_e * y, axis=1)
        roots = np.zeros(k)
        for i in range(k):
            roots[i] = optimize.newton(lambda v, i=i: np.sum(a_e[:, i] * big_x * np.exp(-1 * v / w)) - q[i],
                                       prev[i], maxiter=30, tol=th)
        prev = roots
        y = np.exp(-1 * roots.reshape(1, -1) / w.reshape(-1, 1))
    big_x = 1 / np.sum(a_e * y, axis=1)
    return a_e * big_x.reshape(-1, 1) * y


def test_crest_rates_follow_the_nominal_profile_of_the_labeled_ratio_as_published():
    from pipeline.pseudolabel.prior import crest_rates

    cifar = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]  # CIFAR-10-LT rho 100, rounded down
    published = [(0.01 ** ((9 - c) / 9)) ** (1 / 3) for c in range(10)]  # google-research/crest's sample_rate
    assert np.allclose(crest_rates(cifar, 3.0), published, rtol=0, atol=1e-15)
    measured = (np.array(cifar[::-1]) / 5000) ** (1 / 3)  # the measured-counts rule differs in the last digits
    assert not np.allclose(measured, published, rtol=0, atol=1e-6)
    shuffled = [cifar[i] for i in (3, 0, 9, 1, 2, 4, 5, 6, 7, 8)]  # by rank, whatever the class index
    assert np.allclose(crest_rates(shuffled, 3.0), [published[r] for r in (3, 0, 9, 1, 2, 4, 5, 6, 7, 8)])


def test_outputs_of_the_earlier_crest_and_darp_rules_are_refused_by_name():
    from pipeline.pseudolabel.policies import Policy

    crest = Policy("crest", labeled_counts=(100, 10))
    assert crest.params()["rules"] == 2 and Policy.from_params(crest.params()) == crest
    old = {k: v for k, v in crest.params().items() if k != "rules"}  # recorded before the rules were versioned
    with pytest.raises(ValueError, match="earlier crest/none rules .* run the stream again"):
        Policy.from_params(old)
    assert "rules" not in Policy("threshold").params()  # other policies did not change
    assert Policy.from_params({"name": "threshold", "tau": 0.9}) == Policy("threshold", tau=0.9)


def test_darp_is_the_published_rule_number_for_number():
    rng = np.random.default_rng(11)
    pool, _ = draw(TRAIN_PRIOR[::-1], 600, rng)
    for target, alpha in ((TRAIN_PRIOR[::-1] * len(pool), 2.0), (TRAIN_PRIOR * len(pool), 2.0),
                          (np.full(K, len(pool) / K), 1.5)):
        assert np.allclose(darp(pool, target, alpha=alpha), published_darp(pool, target, alpha=alpha), rtol=0,
                           atol=1e-12)


def test_darp_drops_a_class_entry_of_rows_outside_its_top_alpha_q():
    pool = np.array([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.55, 0.45]])
    out = darp(pool, np.array([3.0, 1.0]), alpha=1.0)  # class 1 keeps its single most confident row (0.45)
    assert out[3, 1] > 0.5 and (out[:3, 1] < 1e-3).all()  # 0.4, 0.2, 0.1 were set to ~0, not kept


def test_darp_meets_its_constraints_and_moves_confident_rows_least():
    rng = np.random.default_rng(3)
    pool, _ = draw(TRAIN_PRIOR[::-1], 3_000, rng)
    target = TRAIN_PRIOR[::-1] * len(pool)  # the pool's true counts
    out = darp(pool, target, alpha=2.0, iterations=10)
    assert np.allclose(out.sum(1), 1, atol=1e-9)
    assert out.sum(0) == pytest.approx(target, rel=0.02)
    kl = (out * np.log(np.clip(out, 1e-12, None) / np.clip(pool, 1e-12, None))).sum(1)
    entropy = -(pool * np.log(np.clip(pool, 1e-12, None))).sum(1)
    confident, unsure = entropy < np.quantile(entropy, 0.2), entropy > np.quantile(entropy, 0.8)
    assert kl[confident].mean() < kl[unsure].mean()


# --- the correction inside the selection policies and the balance table ------------------------

def test_a_policy_corrected_by_em_labels_a_reversed_pool_closer_to_its_truth():
    from pipeline.pseudolabel.balance import balance_table, prior_errors
    from pipeline.pseudolabel.policies import Policy

    rng = np.random.default_rng(3)
    reversed_prior = TRAIN_PRIOR[::-1]
    pool, y = draw(reversed_prior, 10_000, rng)
    counts = tuple(int(n) for n in 1000 * TRAIN_PRIOR)
    raw = Policy("all").view(pool)
    fixed = Policy("all", labeled_counts=counts, adjust="em").view(pool)
    assert raw.prior is None and np.abs(fixed.prior - reversed_prior).sum() < 0.04
    assert (fixed.predicted == y).mean() > (raw.predicted == y).mean() + 0.05
    assert np.allclose(fixed.predicted, adjust(pool, fixed.prior, TRAIN_PRIOR).argmax(1))
    # without a correction the view is the stored argmax / max, bit for bit
    p32 = pool.astype(np.float32)
    assert (raw.predicted == p32.argmax(1)).all() and (raw.confidence == p32.max(1)).all()

    names = [f"c{k}" for k in range(K)]
    table = balance_table(0, p32.argmax(1), p32.max(1), np.ones(len(y), bool), names, counts,
                          Policy("threshold", tau=0.5, labeled_counts=counts, adjust="em"), 1.0, y, pool).to_pylist()
    assert [r["prior_em"] for r in table] == pytest.approx(fixed.prior.tolist())
    assert [r["adjusted_count"] for r in table] == np.bincount(fixed.predicted, minlength=K).tolist()
    view = Policy("threshold", tau=0.5, labeled_counts=counts, adjust="em").view(pool)
    assert [r["selected_count"] for r in table] == np.bincount(view.predicted[view.keep], minlength=K).tolist()
    right = view.keep & (view.predicted == y)
    assert table[0]["precision"] == pytest.approx(right[view.predicted == 0].sum() / (view.keep & (view.predicted == 0)).sum())
    errors = prior_errors(table)
    assert errors["pl_prior_l1_em"] < 0.25 * errors["pl_prior_l1_labeled"]  # "pool = labeled" is far off
    assert errors["pl_prior_kl_em"] >= 0 and "pl_kl_selected_em" in errors


def test_bbse_correction_is_recorded_with_its_matrix_and_replayed_from_the_record():
    from pipeline.pseudolabel.prior import confusion
    from pipeline.pseudolabel.policies import Policy

    rng = np.random.default_rng(4)
    pool, _ = draw(np.full(K, 0.2), 5_000, rng)
    val, val_y = draw(np.full(K, 0.2), 2_000, rng)
    c = confusion(val, val_y, K)
    policy = Policy("top_k_per_class", top_k=50, labeled_counts=(50, 25, 13, 8, 4), adjust="bbse",
                    confusion=tuple(map(tuple, c)))
    params = policy.params()
    assert set(params) == {"name", "top_k", "labeled_counts", "adjust", "adjust_tau", "confusion"}
    again = Policy.from_params(params)
    assert again == policy
    a, b = policy.view(pool), again.view(pool)
    assert (a.keep == b.keep).all() and (a.predicted == b.predicted).all()
    assert "confusion" not in Policy("all").params() and Policy("all").params() == {"name": "all"}
    with pytest.raises(ValueError, match="confusion matrix of a held-out"):
        Policy("all", labeled_counts=(1,) * K, adjust="bbse").view(pool)


def test_darp_in_a_policy_meets_the_estimated_counts_and_needs_an_estimate():
    from pipeline.pseudolabel.policies import Policy

    rng = np.random.default_rng(5)
    pool, y = draw(TRAIN_PRIOR[::-1], 4_000, rng)
    counts = tuple(int(n) for n in 1000 * TRAIN_PRIOR)
    policy = Policy("all", labeled_counts=counts, adjust="em", adjust_tau=0.0, refine="darp")
    view = policy.view(pool)
    want = darp(pool, view.prior * len(pool))
    assert (view.predicted == want.astype(np.float32).argmax(1)).all()
    share = np.bincount(view.predicted, minlength=K) / len(pool)
    raw = np.bincount(pool.argmax(1), minlength=K) / len(pool)
    assert np.abs(share - view.prior).sum() < np.abs(raw - view.prior).sum()  # the labels follow the estimate
    assert {"refine", "darp_alpha"} <= set(policy.params()) and Policy.from_params(policy.params()) == policy
    with pytest.raises(ValueError, match="set adjust to em or bbse"):
        Policy("all", refine="darp").view(pool)


def test_label_alignment_anneals_over_the_rounds_and_is_recorded():
    from pipeline.config import PseudoLabelConfig
    from pipeline.pseudolabel.policies import Policy, from_config

    counts = (1000, 300, 100, 30, 10)
    cfg = PseudoLabelConfig(select="crest", align_labels=True, align_final_t=0.5)
    temperatures = [from_config(cfg, counts, generation=g, generations=3).align_t for g in (1, 2, 3)]
    assert temperatures == pytest.approx([1.0, 0.75, 0.5])
    policy = from_config(cfg, counts, generation=3, generations=3)
    assert policy.params()["align_t"] == 0.5 and policy.params()["align_final_t"] == 0.5
    old = {**policy.params(), "crest_final_t": 0.5}  # recorded before the rename
    del old["align_final_t"]
    assert Policy.from_params(old) == policy
    rng = np.random.default_rng(6)
    pool, _ = draw(np.full(K, 0.2), 3_000, rng)
    view = policy.view(pool)
    aligned = align(pool, counts, 0.5).astype(np.float32)
    assert (view.predicted == aligned.argmax(1)).all()
    assert "align_t" not in from_config(PseudoLabelConfig(select="crest"), counts).params()
