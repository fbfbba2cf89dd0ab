"""The stream's bounded state (pipeline.pseudolabel.state): updated from each micro-batch alone, it
gives the full recomputation's balance while its sample holds every row, stays exact where it
promises and within its stated error where it estimates, and a replay never counts a batch twice."""
import dataclasses

import numpy as np
import pytest

from pipeline.pseudolabel import state as stream_state
from pipeline.pseudolabel.balance import balance_table, state_balance
from pipeline.pseudolabel.policies import Policy
from pipeline.pseudolabel.prior import divergences
from pipeline.pseudolabel.state import BINS, StreamState

K = 10
LABELED = tuple(int(500 * 0.01 ** (k / (K - 1))) for k in range(K))  # 500 .. 5: rho 100
CONFUSION = tuple(tuple(0.8 if i == j else 0.2 / (K - 1) for j in range(K)) for i in range(K))
POLICIES = [Policy("all"), Policy("threshold", tau=0.7), Policy("class_threshold", tau=0.9, alpha=0.5),
            Policy("top_k_per_class", top_k=40), Policy("crest", labeled_counts=LABELED),
            Policy("threshold", tau=0.6, labeled_counts=LABELED, adjust="em"),
            Policy("top_k_per_class", top_k=1_700, labeled_counts=LABELED, adjust="em"),
            Policy("crest", labeled_counts=LABELED, adjust="em"),
            Policy("all", labeled_counts=LABELED, adjust="bbse", confusion=CONFUSION)]
NOT_COMPARED = ("committed_at", "latency_s", "rows_per_s", "exact", "sample_rows")


def pool(n: int, seed: int, prior=None):
    """(ids, predicted, confidence, probs float32, truth) of a synthetic scored pool, ids unique."""
    rng = np.random.default_rng(seed)
    prior = np.full(K, 1 / K) if prior is None else np.asarray(prior) / np.sum(prior)
    truth = rng.choice(K, size=n, p=prior)
    logits = rng.normal(size=(n, K)) + 2.5 * np.eye(K)[truth]
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs = (probs / probs.sum(1, keepdims=True)).astype(np.float32)
    ids = np.array([f"{seed}-{i:07d}" for i in range(n)])
    return ids, probs.argmax(1), probs.max(1), probs, truth


def stream(rows, batches: int, sample_values: int, policy: Policy, truth: bool = True) -> list:
    """The state after each of ``batches`` micro-batches (each in id order) from the empty one."""
    ids, pred, conf, probs, y = rows
    state = StreamState.empty(K, policy.tau, sample_values, seed=0, has_truth=truth)
    states = []
    for b, part in enumerate(np.array_split(np.arange(len(ids)), batches)):
        part = part[np.argsort(ids[part])]
        state = state.update(b, ids[part].tolist(), pred[part], conf[part], probs[part], y[part] if truth else None)
        states.append(state)
    return states


def comparable(table) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in NOT_COMPARED} for row in table.to_pylist()]


def scored_so_far(rows, batches: int, upto: int):
    """The rows of micro-batches 0..upto in scoring order (batch, then id) and the last one's mask."""
    parts = [p[np.argsort(rows[0][p])] for p in np.array_split(np.arange(len(rows[0])), batches)[: upto + 1]]
    order = np.concatenate(parts)
    return [col[order] for col in rows], np.repeat(np.arange(upto + 1), [len(p) for p in parts]) == upto


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: f"{p.name}-{p.adjust}")
def test_while_the_sample_holds_every_row_the_streamed_balance_is_the_full_recomputation(policy):
    rows = pool(900, seed=1)
    names = [f"c{k}" for k in range(K)]
    for b, state in enumerate(stream(rows, 4, sample_values=10_000 * K, policy=policy)):
        assert state.complete
        (ids, pred, conf, probs, y), in_batch = scored_so_far(rows, 4, b)
        full = balance_table(b, pred, conf, in_batch, names, LABELED, policy, 1.0, y, probs, policy.confusion)
        streamed = state_balance(b, state, pred[in_batch], conf[in_batch], names, LABELED, policy, 1.0,
                                 policy.confusion)
        assert comparable(streamed) == comparable(full)
        assert streamed.column("exact").to_pylist() == [True] * K


def test_the_state_depends_on_the_rows_not_on_how_the_micro_batches_cut_them():
    rows = pool(3000, seed=2)
    a = stream(rows, 3, sample_values=500 * K, policy=Policy("all"))[-1]
    b = stream(rows, 11, sample_values=500 * K, policy=Policy("all"))[-1]
    for key in ("rows", "count", "above", "true_count", "right", "hist", "hist_right"):
        assert np.array_equal(getattr(a, key), getattr(b, key)), key
    assert np.allclose(a.probs_sum, b.probs_sum) and np.allclose(a.confidence_sum, b.confidence_sum)
    assert len(a.s_key) == 500 and sorted(a.s_id) == sorted(b.s_id)  # the same seeded sample
    other_seed = dataclasses.replace(StreamState.empty(K, 0.95, 500 * K, seed=1, has_truth=True))
    ids, pred, conf, probs, y = rows
    order = np.argsort(ids)
    c = other_seed.update(0, ids[order].tolist(), pred[order], conf[order], probs[order], y[order])
    assert sorted(c.s_id) != sorted(a.s_id)


def test_past_the_sample_the_counts_stay_exact_and_the_estimates_keep_their_stated_error():
    prior = 0.05 ** (np.arange(K) / (K - 1))  # a long-tailed pool
    rows = pool(40_000, seed=3, prior=prior)
    ids, pred, conf, probs, y = rows
    names = [f"c{k}" for k in range(K)]
    sample = 2_000
    for policy in POLICIES:
        state = stream(rows, 8, sample_values=sample * K, policy=policy)[-1]
        assert not state.complete and len(state.s_key) == sample
        (o_ids, o_pred, o_conf, o_probs, o_y), in_batch = scored_so_far(rows, 8, 7)
        full = balance_table(7, o_pred, o_conf, in_batch, names, LABELED, policy, 1.0, o_y, o_probs,
                             policy.confusion).to_pydict()
        est = state_balance(7, state, o_pred[in_batch], o_conf[in_batch], names, LABELED, policy, 1.0,
                            policy.confusion).to_pydict()
        assert est["exact"] == [False] * K and est["sample_rows"] == [sample] * K
        for key in ("cumulative_count", "batch_count", "true_count", "labeled_count", "cumulative_rows"):
            assert est[key] == full[key], (policy.name, key)
        assert est["mean_confidence"] == pytest.approx(full["mean_confidence"])
        if policy.adjust == "bbse":
            assert est["prior_bbse"] == pytest.approx(full["prior_bbse"])  # its statistic is kept whole
        # EM from the sample: each share off by about sqrt(p (1 - p) / sample rows)
        l1 = divergences(np.array(full["prior_em"]), np.array(est["prior_em"]))[0]
        assert l1 < 2 * np.sqrt(np.array(full["prior_em"]) * (1 - np.array(full["prior_em"])) / sample).sum()
        kept, kept_full = np.array(est["selected_count"]), np.array(full["selected_count"])
        if policy.adjust == "none" and policy.name != "class_threshold":
            assert kept.tolist() == kept_full.tolist(), policy.name  # exact from the counters
        elif policy.adjust == "none":  # within the rows of the bin each class's threshold falls in
            counts = np.array(full["cumulative_count"])
            t = 0.9 * (counts / counts.max()) ** 0.5
            bin_rows = state.hist[np.arange(K), stream_state.bin_of(t)]
            assert (np.abs(kept - kept_full) <= bin_rows + 1).all()
        else:  # sampled: a binomial error in each class's count
            bound = 4 * np.sqrt(np.maximum(kept_full, 1) * (1 - kept_full / len(ids))) * np.sqrt(len(ids) / sample)
            assert (np.abs(kept - kept_full) <= bound).all(), (policy.name, kept, kept_full)
        precision, precision_full = np.array(est["precision"], float), np.array(full["precision"], float)
        assert np.nanmax(np.abs(precision - precision_full)) < 0.1, policy.name


def test_a_replayed_micro_batch_starts_from_the_state_before_it_and_is_never_counted_twice(tmp_path):
    rows = pool(1200, seed=4)
    states = stream(rows, 3, sample_values=300 * K, policy=Policy("all"))
    out = str(tmp_path)
    for s in states:
        stream_state.save(out, s)
    assert stream_state.saved_batches(out) == [1, 2]  # the batch before the last stays for its replay
    before = stream_state.load_before(out, 2)
    assert before.batch_id == 1
    ids, pred, conf, probs, y = rows
    last = np.array_split(np.arange(len(ids)), 3)[2]
    again = before.update(2, ids[last].tolist(), pred[last], conf[last], probs[last], y[last])
    for f in dataclasses.fields(StreamState):
        assert np.array_equal(np.asarray(getattr(again, f.name)), np.asarray(getattr(states[2], f.name))), f.name
    with pytest.raises(ValueError, match="micro-batch 2 is already in this state"):
        states[2].update(2, ids[last].tolist(), pred[last], conf[last], probs[last], y[last])


def test_a_saved_state_reads_back_whole_and_a_foreign_or_pickled_file_is_refused_naming_it(tmp_path):
    state = stream(pool(500, seed=5), 2, sample_values=100 * K, policy=Policy("threshold", tau=0.5))[-1]
    back = StreamState.from_bytes(state.to_bytes(), "x")
    for f in dataclasses.fields(StreamState):
        assert np.array_equal(np.asarray(getattr(back, f.name)), np.asarray(getattr(state, f.name))), f.name
    import io
    buffer = io.BytesIO()
    np.savez(buffer, version=np.int64(1), classes=np.array([object()], dtype=object))
    with pytest.raises(ValueError, match="bad.npz: unreadable stream state"):
        StreamState.from_bytes(buffer.getvalue(), "bad.npz")
    with pytest.raises(ValueError, match="cut.npz: unreadable stream state"):
        StreamState.from_bytes(state.to_bytes()[:200], "cut.npz")


def test_the_histogram_interpolates_inside_the_bin_a_threshold_falls_in():
    hist = np.zeros((1, BINS))
    hist[0, BINS // 2] = 10  # ten rows in [0.5, 0.5 + 1/BINS)
    assert stream_state.above(hist, [0.5])[0] == pytest.approx(10)
    assert stream_state.above(hist, [0.5 + 0.5 / BINS])[0] == pytest.approx(5)
    assert stream_state.above(hist, [0.9])[0] == 0
    right = hist.copy()
    right[0, BINS // 2] = 4
    assert stream_state.top(hist, right, np.array([5]))[0] == pytest.approx(2)


def test_the_books_carry_em_across_micro_batches_to_the_samples_own_estimate(tmp_path):
    from pipeline.pseudolabel.books import Books
    from pipeline.pseudolabel.prior import em_prior
    import pyarrow as pa

    prior = 0.05 ** (np.arange(K) / (K - 1))
    ids, pred, conf, probs, y = pool(24_000, seed=6, prior=prior)
    books = Books(str(tmp_path), [f"c{k}" for k in range(K)], LABELED, Policy("all"), sample_values=1_000 * K)
    for b, part in enumerate(np.array_split(np.arange(len(ids)), 12)):
        labels = pa.table({"id": ids[part], "predicted": pred[part].astype(np.int32), "confidence": conf[part],
                           "probs": list(probs[part])})
        table, state = books.commit(b, labels, started=0.0)
    assert not state.complete and table.column("exact").to_pylist() == [False] * K
    assert table.column("em_iterations")[0].as_py() <= stream_state.EM_STEPS  # bounded per micro-batch
    converged = em_prior(state.s_probs, np.asarray(LABELED, dtype=np.float64))
    assert table.column("prior_em").to_pylist() == pytest.approx(converged.prior.tolist(), abs=5e-4)
    cold = em_prior(state.s_probs, np.asarray(LABELED, dtype=np.float64), max_iter=stream_state.EM_STEPS)
    warm_gap = np.abs(np.array(table.column("prior_em").to_pylist()) - converged.prior).sum()
    assert warm_gap < 0.5 * np.abs(cold.prior - converged.prior).sum()  # the carried prior did the work
    assert stream_state.saved_batches(str(tmp_path)) == [10, 11]


def test_a_stream_whose_state_folder_is_lost_rebuilds_it_from_its_labels_listing_them_once(tmp_path, monkeypatch):
    """An output written before the state existed (or whose state/ was deleted): the next micro-batch
    brings the state up from the committed labels, one batch's files at a time from a single listing,
    and ends where the unbroken run ends."""
    import datetime
    import shutil

    import pyarrow as pa

    from pipeline.pseudolabel import store
    from pipeline.pseudolabel.books import Books

    ids, pred, conf, probs, y = pool(2_100, seed=8)
    truth = dict(zip(ids.tolist(), y.tolist()))
    parts = np.array_split(np.arange(len(ids)), 7)
    policy = Policy("threshold", tau=0.6, labeled_counts=LABELED, adjust="em")

    def run(out, batches, books=None):
        books = books or Books(str(out), [f"c{k}" for k in range(K)], LABELED, policy, truth=truth,
                               sample_values=4_000 * K)
        for b in batches:
            part = parts[b]
            labels = pa.table({"id": ids[part], "predicted": pred[part].astype(np.int32), "confidence": conf[part],
                               "probs": list(probs[part]), "model_run_id": ["m"] * len(part),
                               "scored_at": [datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)] * len(part)})
            store.begin_labels(str(out), b)
            store.write_labels(labels, str(out), b)
            table, state = books.commit(b, labels, started=0.0)
        return table, state

    unbroken_table, unbroken = run(tmp_path / "unbroken", range(7))
    run(tmp_path / "lost", range(6))
    shutil.rmtree(tmp_path / "lost" / stream_state.FOLDER)
    listings = []
    listed = store.committed_batches
    monkeypatch.setattr(store, "committed_batches", lambda out: listings.append(out) or listed(out))
    table, rebuilt = run(tmp_path / "lost", [6])
    assert len(listings) == 1  # six lagging batches, one listing
    for f in dataclasses.fields(StreamState):
        if f.name != "em_prior":  # EM restarts from the labeled prior; the sample holds every row, so nothing reads it
            assert np.array_equal(np.asarray(getattr(rebuilt, f.name)), np.asarray(getattr(unbroken, f.name))), f.name
    assert rebuilt.complete and rebuilt.batch_id == 6
    assert comparable(table) == comparable(unbroken_table)
    assert stream_state.saved_batches(str(tmp_path / "lost")) == [6]
