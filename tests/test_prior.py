"""Distribution-aware pseudo-label parts on synthetic probability tables with a known pool prior:
EM and BBSE recover it, the adjusted predictions follow it, CReST's rates follow their formula,
DARP meets its constraints and moves the confident rows least."""
import numpy as np
import pytest

from streaming.prior import (PRIOR_ESTIMATORS, adjust, align, bbse_prior, crest_keep, crest_rates,
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
    n = sorted(counts, reverse=True)  # N_1 .. N_5 = 1500, 500, 140, 50, 15
    rank = {1500: 1, 500: 2, 140: 3, 50: 4, 15: 5}
    want = [(n[5 - rank[c]] / n[0]) ** (1 / 3) for c in counts]  # N_(K+1-r) / N_1
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
    from streaming.balance import balance_table, prior_errors
    from streaming.select import Policy

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
    from streaming.prior import confusion
    from streaming.select import Policy

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
    from streaming.select import Policy

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


def test_crest_plus_alignment_anneals_over_the_rounds_and_is_recorded():
    from pipeline.config import PseudoLabelConfig
    from streaming.select import from_config

    counts = (1000, 300, 100, 30, 10)
    cfg = PseudoLabelConfig(select="crest", crest_align=True, crest_final_t=0.5)
    temperatures = [from_config(cfg, counts, generation=g, generations=3).align_t for g in (1, 2, 3)]
    assert temperatures == pytest.approx([1.0, 0.75, 0.5])
    policy = from_config(cfg, counts, generation=3, generations=3)
    assert policy.params()["align_t"] == 0.5 and policy.params()["crest_final_t"] == 0.5
    rng = np.random.default_rng(6)
    pool, _ = draw(np.full(K, 0.2), 3_000, rng)
    view = policy.view(pool)
    aligned = align(pool, counts, 0.5).astype(np.float32)
    assert (view.predicted == aligned.argmax(1)).all()
    assert "align_t" not in from_config(PseudoLabelConfig(select="crest"), counts).params()
